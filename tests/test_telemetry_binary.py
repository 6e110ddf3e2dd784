"""The binary telemetry encoding (core.payloads) and its way through ingest: round trips, malformed
payloads rejected with a reason (and counted, the stream going on), the COPY rows ingest builds from it,
and ingest on a plain (not shared) subscription."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiomqtt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from core import mqtt as core_mqtt
from core.metrics import BY_NAME, CATALOGUE
from core.payloads import (
    BINARY_MAGIC,
    PayloadError,
    Sample,
    TelemetryBatch,
    decode_telemetry,
    encode_telemetry,
    parse_binary_telemetry,
    telemetry_seq,
)
from core.settings import Settings
from core.topics import Channel, topic
from ingest.rows import PG_EPOCH_US, Columns, copy_rows, micros
from ingest.service import IngestService, telemetry_filter

NAMES = [m.name for m in CATALOGUE]
HEADER = struct.Struct("<4sIQII")

# -- the encoding -------------------------------------------------------------------------------------

stamps = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
samples = st.builds(
    Sample, ts=stamps, values=st.dictionaries(st.sampled_from(NAMES), finite, min_size=1, max_size=12)
)
batches = st.builds(
    TelemetryBatch, seq=st.integers(0, (1 << 64) - 1), samples=st.lists(samples, min_size=1, max_size=20)
)


@given(batches)
def test_binary_round_trip(batch: TelemetryBatch) -> None:
    raw = encode_telemetry(batch, "binary")
    assert raw.startswith(BINARY_MAGIC)
    readings = sum(len(s.values) for s in batch.samples)
    assert len(raw) == 24 + 10 * (len(batch.samples) + readings)
    back = decode_telemetry(raw)
    assert back == batch  # the same instants (in UTC), the same values, bit for bit
    assert telemetry_seq(raw) == batch.seq


@given(batches)
def test_json_is_still_accepted_and_says_the_same(batch: TelemetryBatch) -> None:
    raw = encode_telemetry(batch, "json")
    assert decode_telemetry(raw) == decode_telemetry(encode_telemetry(batch, "binary"))
    assert telemetry_seq(raw) == batch.seq


def _binary(
    samples: list[tuple[int, list[tuple[int, float]]]], *, seq: int = 1, flags: int = 0, n: int | None = None
) -> bytes:
    """A binary payload written by hand (so it can be wrong): samples of (µs, [(metric id, value)])."""
    readings = [r for _, rs in samples for r in rs]
    header = HEADER.pack(BINARY_MAGIC, flags, seq, len(samples), len(readings) if n is None else n)
    return (
        header
        + struct.pack(f"<{len(samples)}q", *(us for us, _ in samples))
        + struct.pack(f"<{len(readings)}d", *(v for _, v in readings))
        + struct.pack(f"<{len(samples)}H", *(len(rs) for _, rs in samples))
        + struct.pack(f"<{len(readings)}H", *(i for i, _ in readings))
    )


T_US = micros(datetime(2026, 6, 21, 4, 0, tzinfo=UTC))
GOOD = _binary([(T_US, [(1, 1.5), (5, 230.0)]), (T_US + 1_000_000, [(1, 1.6)])])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (GOOD[:20], "shorter than the header"),
        (GOOD[:-1], "the header says"),
        (GOOD + b"\0", "the header says"),
        (b"LTB\x02" + GOOD[4:], "magic"),
        (_binary([(T_US, [(1, 1.0)])], flags=1), "flags"),
        (HEADER.pack(BINARY_MAGIC, 0, 1, 0, 0), "0 samples"),
        (_binary([(T_US, [(1, 1.0)])] * 10_001), "samples, not 1..10000"),
        (_binary([(T_US, [(1, 1.0)]), (T_US, [])]), "readings in 2 samples"),
        (_binary([(T_US, [(1, 1.0), (2, 2.0)]), (T_US, [])]), "without readings"),
        (_binary([(T_US, [(1, float("nan"))])]), "NaN or infinite"),
        (_binary([(T_US, [(1, 1.0), (2, float("-inf"))])]), "NaN or infinite"),
        (_binary([(T_US, [(1, 1.0), (5, 2.0), (1, 3.0)])]), "a metric twice in one sample"),
    ],
)
def test_malformed_binary_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_binary_telemetry(payload)
    with pytest.raises(PayloadError):
        decode_telemetry(payload)


def test_counts_that_do_not_add_up_are_rejected() -> None:
    payload = bytearray(_binary([(T_US, [(1, 1.0), (2, 2.0)]), (T_US + 1, [(3, 3.0)])]))
    counts_at = 24 + 8 * 2 + 8 * 3
    payload[counts_at : counts_at + 4] = struct.pack("<2H", 1, 1)
    with pytest.raises(PayloadError, match="do not add up"):
        parse_binary_telemetry(bytes(payload))


def test_the_same_metric_in_two_samples_is_fine_and_unknown_ids_are_left_to_the_consumer() -> None:
    parsed = parse_binary_telemetry(_binary([(T_US, [(1, 1.0)]), (T_US + 1, [(1, 2.0), (999, 3.0)])]))
    assert list(parsed.metric_ids) == [1, 1, 999]
    with pytest.raises(PayloadError, match="metric id 999 is not in the catalogue"):
        decode_telemetry(_binary([(T_US, [(999, 1.0)])]))


def test_names_outside_the_catalogue_cannot_be_encoded() -> None:
    batch = TelemetryBatch(seq=0, samples=[Sample(ts=datetime.now(UTC), values={"no_such_metric": 1.0})])
    with pytest.raises(PayloadError, match="not in the metric catalogue"):
        encode_telemetry(batch, "binary")
    assert decode_telemetry(encode_telemetry(batch, "json")) == batch  # JSON carries any name


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.integers(0, 3))
def test_garbage_after_the_magic_is_a_payload_error_or_a_valid_payload(tail: bytes, samples: int) -> None:
    raw = HEADER.pack(BINARY_MAGIC, 0, 7, samples, max(0, len(tail) // 10 - samples)) + tail
    try:
        parsed = parse_binary_telemetry(raw)
    except PayloadError:
        return
    assert sum(parsed.counts) == len(parsed.metric_ids) == len(parsed.values)


# -- COPY rows ------------------------------------------------------------------------------------------

ROW = struct.Struct(">hiqiiihid")


def _reference(parts: list[tuple[int, Columns]]) -> bytes:
    """Binary COPY rows packed one by one (the encoder ingest used before ingest.rows)."""
    out = []
    for device_id, cols in parts:
        at = 0
        for us, count in zip(cols.stamps_us, cols.counts, strict=True):
            for i in range(at, at + count):
                out.append(
                    ROW.pack(4, 8, us - PG_EPOCH_US, 4, device_id, 2, cols.metric_ids[i], 8, cols.values[i])
                )
            at += count
    return b"".join(out)


@given(st.lists(st.tuples(st.integers(1, 2**31 - 1), batches), min_size=1, max_size=5), st.booleans())
def test_copy_rows_match_rows_packed_one_by_one(
    messages: list[tuple[int, TelemetryBatch]], binary: bool
) -> None:
    parts: list[tuple[int, Columns]] = []
    for device_id, batch in messages:
        if binary:  # views of the payload, as ingest takes them
            p = parse_binary_telemetry(encode_telemetry(batch, "binary"))
            parts.append((device_id, Columns(p.stamps_us, p.counts, p.metric_ids, p.values)))
        else:  # lists, as ingest builds them from JSON
            ids = [BY_NAME[n].id for s in batch.samples for n in s.values]
            values = [v for s in batch.samples for v in s.values.values()]
            stamps_us = [micros(s.ts) for s in batch.samples]
            parts.append((device_id, Columns(stamps_us, [len(s.values) for s in batch.samples], ids, values)))
    assert copy_rows(parts) == _reference(parts)


# -- through ingest (real broker and database) ------------------------------------------------------------


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _invalid(reason: str) -> float:
    return REGISTRY.get_sample_value("lishui_ingest_invalid_total", {"reason": reason}) or 0.0


@contextlib.asynccontextmanager
async def running(settings: Settings, client_id: str) -> AsyncIterator[IngestService]:
    service = IngestService(settings, client_id=client_id, session_expiry_s=120, drain_timeout_s=5)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(10):
            await service.ready.wait()
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with aiomqtt.Client(
            settings.mqtt.host, settings.mqtt.port, identifier=client_id, clean_session=True
        ):
            pass  # forget the session


async def _count(dsn: str, device: str) -> int:
    sql = "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.key = %s"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, (device,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _eventually_count(dsn: str, device: str, expected: int, within_s: float = 10.0) -> int:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:  # polling a database: no event to wait on
        if await _count(dsn, device) >= expected:
            break
        await asyncio.sleep(0.05)
    return await _count(dsn, device)


def _batch(seq: int, start: datetime, n: int, **values: float) -> TelemetryBatch:
    return TelemetryBatch(
        seq=seq,
        samples=[
            Sample(
                ts=start + timedelta(seconds=i),
                values={"active_power_w": 100.0 + i, "voltage_v": 230.0, **values},
            )
            for i in range(n)
        ],
    )


@pytest.mark.parametrize("share_group", ["", "g"], ids=["plain subscription", "shared subscription"])
async def test_binary_and_json_land_alike_and_bad_binary_is_counted(
    settings: Settings, share_group: str
) -> None:
    group = _key(share_group) if share_group else ""
    ingest_settings = settings.model_copy(
        update={
            "ingest": settings.ingest.model_copy(update={"share_group": group, "batch_max_delay_s": 0.05})
        }
    )
    assert telemetry_filter(ingest_settings).startswith("$share/") == bool(share_group)
    root, dsn = ingest_settings.topic_root, ingest_settings.db.dsn
    site, device = _key("site"), _key("pv")
    t = topic(site, device, Channel.TELEMETRY, root=root)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    reasons = ("bad_payload", "unknown_metric", "ts_out_of_range")
    before = {r: _invalid(r) for r in reasons}
    async with (
        core_mqtt.client(ingest_settings.mqtt, _key("pub")) as pub,
        running(ingest_settings, _key("ingest")),
    ):
        # Bad binary first: a torn payload, a duplicate metric, NaN. Each is counted; the stream goes on.
        good = encode_telemetry(_batch(0, start, 3), "binary")
        await pub.publish(t, good[:-3], qos=1)
        await pub.publish(t, _binary([(micros(start), [(1, 1.0), (1, 2.0)])], seq=1), qos=1)
        await pub.publish(t, _binary([(micros(start), [(1, float("nan"))])], seq=2), qos=1)
        # An unknown metric id (its reading skipped, the others kept), and a sample from 1999 (skipped).
        odd = [
            (micros(start + timedelta(seconds=30)), [(1, 7.0), (999, 8.0)]),
            (micros(datetime(1999, 1, 1, tzinfo=UTC)), [(1, 9.0)]),
        ]
        await pub.publish(t, _binary(odd, seq=3), qos=1)
        # Good data in both encodings, one binary message twice (a redelivery).
        await pub.publish(t, good, qos=1)
        await pub.publish(t, good, qos=1)
        await pub.publish(t, encode_telemetry(_batch(4, start + timedelta(seconds=60), 5), "json"), qos=1)
        await pub.publish(t, encode_telemetry(_batch(5, start + timedelta(seconds=120), 5), "binary"), qos=1)
        expected = 1 + 3 * 2 + 5 * 2 + 5 * 2
        assert await _eventually_count(dsn, device, expected) == expected
        await asyncio.sleep(0.3)  # the redelivery adds nothing, even late
        assert await _count(dsn, device) == expected
        assert {r: _invalid(r) - before[r] for r in reasons} == {
            "bad_payload": 3,
            "unknown_metric": 1,
            "ts_out_of_range": 1,
        }
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT t.ts, t.metric_id, t.value FROM telemetry t JOIN devices d ON d.id = t.device_id"
                " WHERE d.key = %s AND t.ts >= %s ORDER BY 1, 2",
                (device, start + timedelta(seconds=120)),
            )
            rows: list[Any] = await cur.fetchall()
        assert rows[:2] == [
            (start + timedelta(seconds=120), 1, 100.0),
            (start + timedelta(seconds=120), 5, 230.0),
        ]
