"""Rollups stay equal to the raw data through late and out-of-order writes (the ingest writer marks
buckets dirty, refresh_rollups recomputes them)."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.registry import DeviceResolver
from ingest.maintenance import refresh_rollups
from ingest.writer import Batch, TelemetryWriter

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)  # retention does not run here, so any time will do

reading = st.tuples(
    st.integers(0, 3 * 3600 - 1),  # second offset: spans many 1-minute and 15-minute buckets
    st.sampled_from([1, 5, 11]),  # metric ids
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


async def _write(
    writer: TelemetryWriter, site: str, device: str, readings: list[tuple[int, int, float]]
) -> None:
    batch = Batch()
    batch.add_readings((site, device), [(T0 + timedelta(seconds=s), mid, v) for s, mid, v in readings])
    await writer.write(batch)


async def _rows(conn: psycopg.AsyncConnection[Any], sql: str, device_id: int) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, (device_id,))
    return list(await cur.fetchall())


def _same(rollup: list[tuple[Any, ...]], raw: list[tuple[Any, ...]]) -> None:
    assert [r[:3] for r in rollup] == [r[:3] for r in raw]  # bucket, metric, n
    for a, b in zip(rollup, raw, strict=True):
        assert math.isclose(a[3], b[3], rel_tol=1e-9, abs_tol=1e-6), (a, b)  # sum (order of addition differs)
        assert a[4:] == b[4:], (a, b)  # min, max, last, last_ts


RAW = """SELECT time_bucket(%s, ts) AS b, metric_id, count(*)::int, sum(value), min(value), max(value),
                last(value, ts), max(ts) FROM telemetry WHERE device_id = %s GROUP BY 1, 2 ORDER BY 1, 2"""
ROLLUP = (
    "SELECT bucket, metric_id, n, sum, min, max, last, last_ts FROM {} WHERE device_id = %s ORDER BY 1, 2"
)


async def _check(conn: psycopg.AsyncConnection[Any], device_id: int) -> None:
    await refresh_rollups(conn)
    for width, table in (("1 minute", "telemetry_1m"), ("15 minutes", "telemetry_15m")):
        cur = await conn.execute(RAW, (timedelta(minutes=1 if table == "telemetry_1m" else 15), device_id))
        raw = list(await cur.fetchall())
        rollup = await _rows(conn, ROLLUP.format(table), device_id)
        assert raw, width
        _same(rollup, raw)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    first=st.lists(reading, min_size=1, max_size=300),
    late=st.lists(st.lists(reading, min_size=1, max_size=100), min_size=1, max_size=3),
    seed=st.integers(0, 2**32),
)
async def test_rollups_match_raw_after_late_out_of_order_writes(
    db_dsn: str, first: list[tuple[int, int, float]], late: list[list[tuple[int, int, float]]], seed: int
) -> None:
    rng = random.Random(seed)
    site, device = f"rollup-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    resolver = DeviceResolver()
    writer = TelemetryWriter(db_dsn, resolver)
    try:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            await _write(writer, site, device, sorted(first))
            device_id = resolver.cached(site, device)
            assert device_id is not None
            await _check(conn, device_id)
            for wave in late:
                # Late data into minutes already rolled up, in random order, in several transactions,
                # some of it redelivered.
                rng.shuffle(wave)
                redelivered = rng.sample(first, k=min(len(first), 5))
                for part in (wave[: len(wave) // 2], wave[len(wave) // 2 :] + redelivered):
                    if part:
                        await _write(writer, site, device, part)
                await _check(conn, device_id)
    finally:
        await writer.close()


async def _refresh(conn: psycopg.AsyncConnection[Any], grace: timedelta) -> int:
    cur = await conn.execute("SELECT refresh_rollups(1000, %s)", (grace,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _markers(conn: psycopg.AsyncConnection[Any], device_id: int) -> int:
    cur = await conn.execute("SELECT count(*) FROM rollup_dirty_1m WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_refresh_grace_defers_busy_and_open_buckets_and_skips_locked_markers(db_dsn: str) -> None:
    site, device = f"grace-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    resolver = DeviceResolver()
    writer = TelemetryWriter(db_dsn, resolver)
    now = datetime.now(UTC)
    try:
        # An old (closed) minute just written, and the open minute.
        await _write(writer, site, device, [(0, 1, 1.0), (30, 1, 2.0)])
        batch = Batch()
        batch.add_readings((site, device), [(now, 1, 3.0)])
        await writer.write(batch)
        device_id = resolver.cached(site, device)
        assert device_id is not None
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            assert await _markers(conn, device_id) == 2
            # Dirtied less than a grace ago: both wait (the old minute may still be being written).
            await _refresh(conn, timedelta(minutes=5))
            assert await _markers(conn, device_id) == 2
            # Quiet for the grace: the closed minute is refreshed, the open one is not.
            await asyncio.sleep(0.3)
            await _refresh(conn, timedelta(seconds=0.2))
            if now.second < 59:  # (unless that minute closed meanwhile)
                assert await _markers(conn, device_id) == 1
            # A marker held by an uncommitted writer is skipped (not claimed without its rows), and
            # refreshed once the writer commits.
            await _write(writer, site, device, [(40, 1, 5.0)])
            async with await psycopg.AsyncConnection.connect(db_dsn) as held:
                late = T0 + timedelta(seconds=45)
                await held.execute("INSERT INTO telemetry VALUES (%s, %s, 1, 7.0)", (late, device_id))
                await held.execute(
                    "SELECT mark_rollups_dirty(ARRAY[%s]::timestamptz[], ARRAY[%s])", (late, device_id)
                )
                await _refresh(conn, timedelta(0))
                assert await _markers(conn, device_id) == 1
                await held.commit()
            await _check(conn, device_id)
            assert await _markers(conn, device_id) == 0
    finally:
        await writer.close()
