"""The writer's fast path (de-duplication by message identity, COPY straight into telemetry) and its
fallback: every reading lands exactly once whatever identity it arrives under, and two writers given
the same message write it once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from core import registry
from core.payloads import Sample, TelemetryBatch, encode
from core.registry import DeviceResolver
from ingest.writer import Batch, Reading, TelemetryWriter, WriteResult, payload_digest

T0 = datetime(2025, 4, 1, 6, 0, tzinfo=UTC)


def _readings(first_s: int, n: int) -> list[Reading]:
    return [
        (T0 + timedelta(seconds=first_s + i), metric, 10.0 * i + metric)
        for i in range(n)
        for metric in (1, 5)
    ]


def _message(pair: tuple[str, str], seq: int, readings: list[Reading]) -> Batch:
    """A batch holding one message, identified as ingest identifies it (seq and payload digest)."""
    samples: dict[datetime, dict[str, float]] = {}
    for ts, metric, value in readings:
        samples.setdefault(ts, {})[f"m{metric}"] = value
    payload = encode(TelemetryBatch(seq=seq, samples=[Sample(ts=t, values=v) for t, v in samples.items()]))
    batch = Batch()
    batch.add_message(pair, seq, payload_digest(payload), list(readings))
    return batch


async def _count(conn: psycopg.AsyncConnection[Any], device_id: int) -> int:
    cur = await conn.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _pair() -> tuple[str, str]:
    return f"fp-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"


async def test_redelivery_under_another_identity_falls_back_and_writes_once(
    db_dsn: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    pair = _pair()
    resolver = DeviceResolver()
    writer = TelemetryWriter(db_dsn, resolver)
    first, more = _readings(0, 30), _readings(30, 20)
    try:
        done = await writer.write(_message(pair, 7, first))
        assert (done.inserted, done.duplicates, done.fallback) == (len(first), 0, False)
        device_id = resolver.cached(*pair)
        assert device_id is not None
        # A plain redelivery (same payload, same seq) is skipped whole on the fast path.
        again = await writer.write(_message(pair, 7, first))
        assert (again.inserted, again.duplicates, again.fallback) == (0, len(first), False)
        # The same readings plus new ones under another seq (a gateway that lost its seq state): the
        # direct COPY meets existing rows, the batch is staged, only the new rows are written.
        mixed = await writer.write(_message(pair, 0, first[10:] + more))
        assert (mixed.inserted, mixed.duplicates, mixed.fallback) == (len(more), len(first) - 10, True)
        # A reused seq with new content is new data, not a redelivery (the digest tells them apart).
        later = _readings(100, 5)
        reused = await writer.write(_message(pair, 7, later))
        assert (reused.inserted, reused.fallback) == (len(later), False)
        # The same message twice in one batch is written once.
        twice = _message(pair, 8, _readings(200, 5))
        twice.merge(_message(pair, 8, _readings(200, 5)))
        both = await writer.write(twice)
        assert (both.inserted, both.duplicates) == (10, 10)
        assert await _count(conn, device_id) == len(first) + len(more) + len(later) + 10
        cur = await conn.execute("SELECT last_seen FROM devices WHERE id = %s", (device_id,))
        assert await cur.fetchone() == (T0 + timedelta(seconds=204),)
    finally:
        await writer.close()


async def test_two_writers_given_the_same_message_write_it_once(
    db_dsn: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    site, device = _pair()
    await registry.upsert_site(conn, site, "Fast path site", None, "mengxi")
    device_id = await registry.upsert_device(conn, device, site, "meter")
    readings = _readings(0, 40)
    writers = [TelemetryWriter(db_dsn, DeviceResolver(), application_name=f"lishui-fp-{i}") for i in (0, 1)]
    results: list[WriteResult] = []
    try:
        # Hold the device row, so the first writer stops at last_seen with its message claimed and its
        # rows copied, and the second one has to meet it mid-transaction (on the message identity).
        async with await psycopg.AsyncConnection.connect(db_dsn) as locker:
            await locker.execute("SELECT 1 FROM devices WHERE id = %s FOR UPDATE", (device_id,))
            tasks = [asyncio.create_task(w.write(_message((site, device), 3, readings))) for w in writers]
            for _ in range(200):  # until both backends wait on a lock
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'lishui-fp-%'"
                    " AND wait_event_type = 'Lock'"
                )
                row = await cur.fetchone()
                if row and row[0] == 2:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the two writers never met")
            await locker.rollback()
            results = list(await asyncio.gather(*tasks))
    finally:
        for w in writers:
            await w.close()
    assert sorted((r.inserted, r.duplicates) for r in results) == [(0, len(readings)), (len(readings), 0)]
    assert not any(r.fallback for r in results)
    assert await _count(conn, device_id) == len(readings)
