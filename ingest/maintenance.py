"""Periodic database work ingest does: rollup refresh and retention (TimescaleDB Apache build: no
continuous aggregates and no policies, so both are ours)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import psycopg

from core.settings import DatabaseSettings
from ingest import metrics as m

log = logging.getLogger(__name__)

# ingest_batches (message identities, see ingest/writer.py) lives as long as the readings.
RAW_TABLES = ("telemetry", "ingest_batches")
ROLLUP_TABLES = ("telemetry_1m", "telemetry_15m")


async def refresh_rollups(
    conn: psycopg.AsyncConnection[Any], batch: int = 5_000, max_rounds: int = 1_000, grace_s: float = 0.0
) -> int:
    """Call ``refresh_rollups(batch, grace)`` until it returns fewer than ``batch``; each call commits on
    its own (so a big backlog is worked off in short transactions). Returns the 1-minute buckets
    recomputed. ``grace_s`` 0 (the default) refreshes every dirty bucket; ingest's periodic refresh
    passes ``ingest.rollup_grace_s`` so a bucket is recomputed once its minute is closed and quiet
    (see migration 0004), about once per minute instead of at every refresh."""
    total = 0
    grace = timedelta(seconds=grace_s)
    for _ in range(max_rounds):
        async with conn.transaction():
            cur = await conn.execute("SELECT refresh_rollups(%s, %s)", (batch, grace))
            row = await cur.fetchone()
        done = int(row[0]) if row else 0
        total += done
        if done < batch:
            break
    m.ROLLUP_BUCKETS.inc(total)
    return total


async def apply_retention(conn: psycopg.AsyncConnection[Any], settings: DatabaseSettings) -> dict[str, int]:
    """Drop whole chunks older than the retention periods; returns chunks dropped per table."""
    dropped: dict[str, int] = {}
    plan = [(t, settings.retention_days) for t in RAW_TABLES]
    plan += [(t, settings.rollup_retention_days) for t in ROLLUP_TABLES]
    for table, days in plan:
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT count(*) FROM drop_chunks(%s::regclass, older_than => make_interval(days => %s))",
                (table, days),
            )
            row = await cur.fetchone()
        n = int(row[0]) if row else 0
        dropped[table] = n
        if n:
            m.CHUNKS_DROPPED.labels(table=table).inc(n)
            log.info("retention dropped chunks", extra={"table": table, "chunks": n, "older_than_days": days})
    return dropped
