"""Payloads of MQTT contract v1, as pydantic models. JSON on the wire (UTF-8), one object per message.

Every payload carries ``v`` (the contract version); a consumer rejects versions it does not know.
Timestamps are timezone-aware ISO 8601 (UTC recommended); naive timestamps are rejected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "Command",
    "CommandResult",
    "CommandStatus",
    "DeviceEvent",
    "DeviceState",
    "PayloadError",
    "Sample",
    "Status",
    "TelemetryBatch",
    "decode",
    "encode",
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
