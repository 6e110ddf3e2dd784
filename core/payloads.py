"""Payloads of MQTT contract v1, as pydantic models. JSON on the wire (UTF-8), one object per message.

Every payload carries ``v`` (the contract version); a consumer rejects versions it does not know.
Timestamps are timezone-aware ISO 8601 (UTC recommended); naive timestamps are rejected.

Telemetry has a second, binary encoding of the same ``TelemetryBatch`` (``encode_telemetry``), for
publishers whose volume makes JSON the cost that matters; a consumer tells the two apart by the first
bytes (``BINARY_MAGIC``; a JSON payload starts with ``{``) and accepts both (``decode_telemetry``).
Little-endian, every column naturally aligned::

    offset  size  field
    0       4     magic      b"LTB\x01" (Lishui Telemetry Binary, format 1 of contract v1)
    4       4     flags      u32, 0 (reserved: a payload with another value is rejected)
    8       8     seq        u64, as TelemetryBatch.seq
    16      4     samples    u32, S: 1..10,000
    20      4     readings   u32, N: S or more
    24      8*S   ts         i64[S], each sample's time in microseconds since 1970-01-01T00:00Z
    ..      8*N   value      f64[N], in the catalogue's unit, finite
    ..      2*S   count      u16[S], the readings of each sample (at least 1; they add up to N)
    ..      2*N   metric     u16[N], catalogue metric ids (core.metrics: stable, never reused)

The payload is exactly ``24 + 10 * (S + N)`` bytes. Sample i holds the ``count[i]`` readings that follow
those of samples 0..i-1 (pairs of ``metric`` and ``value``); a metric appears at most once per sample.
A 5-sample, 50-reading batch is 574 bytes (about 2.3 kB in JSON).
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from core.metrics import BY_ID, BY_NAME

__all__ = [
    "BINARY_MAGIC",
    "BinaryTelemetry",
    "Command",
    "CommandResult",
    "CommandStatus",
    "DeviceEvent",
    "DeviceState",
    "PayloadError",
    "Sample",
    "Status",
    "TelemetryBatch",
    "TelemetryEncoding",
    "decode",
    "decode_telemetry",
    "encode",
    "encode_telemetry",
    "is_binary_telemetry",
    "parse_binary_telemetry",
    "telemetry_seq",
    "utcnow",
]

SLUG = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Payload(BaseModel):
    # Strict about shape (unknown fields are a producer bug worth hearing about) and about numbers
    # (NaN/inf never reach the database).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    v: Literal[1] = 1


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    ts: AwareDatetime
    # Catalogue metric name -> value in the catalogue's unit (see core.metrics).
    values: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], float] = Field(min_length=1)


class TelemetryBatch(_Payload):
    """``{root}/v1/{site}/{device}/telemetry``, QoS 1. One device's samples, oldest first.

    ``seq`` increases by one per batch a publisher sends for a device; with the device it identifies a
    batch, so a consumer can tell a redelivery from new data.
    """

    seq: int = Field(ge=0)
    samples: list[Sample] = Field(min_length=1, max_length=10_000)


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"  # not answering at all (timeouts, connection refused)
    FAULT = "fault"  # answering, but with errors (Modbus exceptions, undecodable data)


class Status(_Payload):
    """``{root}/v1/{site}/{device}/status``, QoS 1, retained; the publisher's last-will says offline."""

    state: DeviceState
    reason: str | None = None
    ts: AwareDatetime = Field(default_factory=utcnow)
    source: str | None = None  # the gateway or server holding the device


class Command(_Payload):
    """``{root}/v1/{site}/{device}/cmd``, QoS 1. Answered once on ``cmd/result`` with the same id."""

    id: str = Field(min_length=1, max_length=64)
    op: str = Field(pattern=SLUG)
    # JSON arguments of the operation: scalars for setpoints, nested objects where a protocol needs
    # them (an OCPP charging profile). Each holder validates the args of the ops it knows.
    args: dict[str, Any] = Field(default_factory=dict)
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    # Not carried out by then -> answered "expired" and not written.
    expires_at: AwareDatetime | None = None
    # A setpoint held only this long: the device's holder restores the control's default afterwards
    # unless a newer command renews it (so a device falls back safely if its controller dies).
    hold_s: float | None = Field(default=None, gt=0)
    requested_by: str | None = None


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"  # written and read back
    REJECTED = "rejected"  # invalid (unknown op, out of limits): nothing was written
    FAILED = "failed"  # valid, but the device did not take it (exception, timeout, readback mismatch)
    EXPIRED = "expired"  # arrived or came due after expires_at: nothing was written


class CommandResult(_Payload):
    """``{root}/v1/{site}/{device}/cmd/result``, QoS 1."""

    id: str
    status: CommandStatus
    detail: str | None = None
    readback: dict[str, float] | None = None
    # The device's own answer where it has one (an OCPP pile's response payload).
    response: dict[str, Any] | None = None
    ts: AwareDatetime = Field(default_factory=utcnow)


class DeviceEvent(_Payload):
    """``{root}/v1/{site}/{device}/event``, QoS 1: discrete happenings (transactions, alarms)."""

    kind: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")
    ts: AwareDatetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict)


class PayloadError(ValueError):
    """A message that is not a valid payload of the contract; ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


P = TypeVar("P", bound=BaseModel)


def encode(payload: BaseModel) -> bytes:
    return payload.model_dump_json(exclude_none=True).encode()


def decode(model: type[P], raw: bytes | bytearray | str) -> P:
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise PayloadError(f"{where}: {first['msg']} ({err.error_count()} error(s))") from err


# -- telemetry: the binary encoding (layout in the module docstring) ---------------------------------


class TelemetryEncoding(StrEnum):
    JSON = "json"
    BINARY = "binary"


BINARY_MAGIC = b"LTB\x01"
_HEADER = struct.Struct("<4sIQII")  # magic, flags, seq, samples, readings
MAX_SAMPLES = 10_000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def encode_telemetry(batch: TelemetryBatch, encoding: TelemetryEncoding | str = "json") -> bytes:
    """``batch`` in the given encoding. The binary one carries catalogue ids, so every metric name must
    be in the catalogue (``PayloadError`` otherwise), and ``seq`` must fit in 64 bits."""
    if encoding == TelemetryEncoding.JSON:
        return encode(batch)
    if encoding != TelemetryEncoding.BINARY:
        raise ValueError(f"unknown telemetry encoding {encoding!r}")
    if batch.seq >= 1 << 64:
        raise PayloadError("binary telemetry: seq does not fit in 64 bits")
    stamps, values, counts, ids = array("q"), array("d"), array("H"), array("H")
    for sample in batch.samples:
        stamps.append((sample.ts - _UNIX_EPOCH) // _MICROSECOND)
        counts.append(len(sample.values))
        for name, value in sample.values.items():
            metric = BY_NAME.get(name)
            if metric is None:
                raise PayloadError(f"binary telemetry: {name!r} is not in the metric catalogue")
            ids.append(metric.id)
            values.append(value)
    if _BIG_ENDIAN_HOST:
        for column in (stamps, values, counts, ids):
            column.byteswap()
    header = _HEADER.pack(BINARY_MAGIC, 0, batch.seq, len(counts), len(ids))
    return b"".join((header, stamps.tobytes(), values.tobytes(), counts.tobytes(), ids.tobytes()))


def is_binary_telemetry(raw: bytes | bytearray | memoryview) -> bool:
    return raw[:4] == BINARY_MAGIC


def telemetry_seq(raw: bytes) -> int | None:
    """The ``seq`` of a telemetry payload in either encoding, read cheaply (None if there is none)."""
    if is_binary_telemetry(raw):
        return int(_HEADER.unpack_from(raw)[2]) if len(raw) >= _HEADER.size else None
    try:
        seq = orjson.loads(raw)["seq"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


@dataclass(frozen=True, slots=True)
class BinaryTelemetry:
    """The columns of a binary telemetry payload, as views of its bytes in host byte order (memoryviews;
    ``numpy.frombuffer`` reads them without a copy)."""

    seq: int
    stamps_us: Sequence[int]  # per sample, microseconds since the Unix epoch (UTC)
    counts: Sequence[int]  # per sample
    metric_ids: Sequence[int]  # per reading
    values: Sequence[float]  # per reading


def _column(raw: memoryview, fmt: str, at: int, n: int) -> Sequence[Any]:
    part = raw[at : at + n * struct.calcsize(fmt)]
    if _BIG_ENDIAN_HOST:  # the payload is little-endian
        column = array(fmt, part.tobytes())
        column.byteswap()
        return column
    return part.cast(fmt)  # type: ignore[call-overload]  # (fmt is one of q, d, H)


def parse_binary_telemetry(raw: bytes) -> BinaryTelemetry:
    """The columns of a binary telemetry payload, its structure checked: length, header, counts, finite
    values, no metric twice in a sample (``PayloadError`` with the reason). Metric ids are not checked
    against the catalogue here: a consumer counts unknown ones as it counts unknown names in JSON.
    (Plain Python on views: for the few samples of a message, cheaper than numpy's per-call cost.)"""
    if len(raw) < _HEADER.size:
        raise PayloadError(f"binary telemetry: {len(raw)} bytes, shorter than the header")
    magic, flags, seq, n_samples, n_readings = _HEADER.unpack_from(raw)
    if magic != BINARY_MAGIC:
        raise PayloadError("binary telemetry: not the LTB1 magic")
    if flags:
        raise PayloadError(f"binary telemetry: unknown flags {flags:#x}")
    if not 1 <= n_samples <= MAX_SAMPLES:
        raise PayloadError(f"binary telemetry: {n_samples} samples, not 1..{MAX_SAMPLES}")
    if n_readings < n_samples:
        raise PayloadError(f"binary telemetry: {n_readings} readings in {n_samples} samples")
    size = _HEADER.size + 10 * (n_samples + n_readings)
    if len(raw) != size:
        raise PayloadError(f"binary telemetry: {len(raw)} bytes, the header says {size}")
    view = memoryview(raw)
    at = _HEADER.size
    stamps = _column(view, "q", at, n_samples)
    values = _column(view, "d", at + 8 * n_samples, n_readings)
    counts = _column(view, "H", at + 8 * (n_samples + n_readings), n_samples)
    ids = _column(view, "H", at + 8 * (n_samples + n_readings) + 2 * n_samples, n_readings)
    counted = counts.tolist() if isinstance(counts, memoryview) else list(counts)
    if 0 in counted:
        raise PayloadError("binary telemetry: a sample without readings")
    if sum(counted) != n_readings:
        raise PayloadError(f"binary telemetry: the sample counts do not add up to {n_readings} readings")
    # The sum of finite values is finite unless it overflows; only then is each value looked at.
    if not math.isfinite(sum(values)) and not all(map(math.isfinite, values)):
        raise PayloadError("binary telemetry: a value is NaN or infinite")
    if n_readings > n_samples:
        listed = ids.tolist() if isinstance(ids, memoryview) else list(ids)
        start = 0
        for count in counted:
            if count > 1 and len(set(listed[start : start + count])) != count:
                raise PayloadError("binary telemetry: a metric twice in one sample")
            start += count
    return BinaryTelemetry(seq, stamps, counted, ids, values)


def decode_telemetry(raw: bytes | bytearray) -> TelemetryBatch:
    """A telemetry payload, whichever encoding of the contract it uses (``PayloadError`` if invalid;
    a binary payload whose metric ids are not all in the catalogue is invalid here, having no names)."""
    if not is_binary_telemetry(raw):
        return decode(TelemetryBatch, raw)
    columns = parse_binary_telemetry(bytes(raw))
    samples: list[Sample] = []
    ids, values = list(columns.metric_ids), list(columns.values)
    at = 0
    for stamp, count in zip(columns.stamps_us, columns.counts, strict=True):
        named: dict[str, float] = {}
        for metric_id, value in zip(ids[at : at + count], values[at : at + count], strict=True):
            metric = BY_ID.get(metric_id)
            if metric is None:
                raise PayloadError(f"binary telemetry: metric id {metric_id} is not in the catalogue")
            named[metric.name] = value
        at += count
        try:
            ts = _UNIX_EPOCH + stamp * _MICROSECOND
        except OverflowError:
            raise PayloadError(f"binary telemetry: time {stamp} us is out of range") from None
        try:
            samples.append(Sample(ts=ts, values=named))
        except ValidationError as err:
            raise PayloadError(f"binary telemetry: {err.errors()[0]['msg']}") from err
    try:
        return TelemetryBatch(seq=columns.seq, samples=samples)
    except ValidationError as err:
        raise PayloadError(f"binary telemetry: {err.errors()[0]['msg']}") from err
