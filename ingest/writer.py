"""Batches and the database writer: binary COPY into a staging table, then one transaction that inserts
into ``telemetry`` (``ON CONFLICT DO NOTHING``, so a redelivered reading is a no-op), marks the touched
rollup buckets dirty, advances ``devices.last_seen`` and applies device statuses.

Every statement locks rows in a fixed order (telemetry by primary key, markers by (bucket, device),
devices by id), so any number of ingest processes writing the same devices at once never deadlock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from core.payloads import Status
from core.registry import DeviceConflict, DeviceResolver
from ingest.source import Ack

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (site_key, device_key)
Reading = tuple[datetime, int, float]  # (ts, metric_id, value)


@dataclass
class Batch:
    """What one transaction writes, and the messages it acknowledges once committed."""

    readings: dict[Pair, list[Reading]] = field(default_factory=dict)
    messages: dict[Pair, int] = field(default_factory=dict)  # telemetry messages per device
    statuses: dict[Pair, Status] = field(default_factory=dict)  # newest per device
    acks: list[Ack] = field(default_factory=list)
    rows: int = 0
    started: float = field(default_factory=time.monotonic)

    def __bool__(self) -> bool:
        return bool(self.acks or self.rows or self.statuses)

    def add_readings(self, pair: Pair, readings: list[Reading]) -> None:
        self.readings.setdefault(pair, []).extend(readings)
        self.messages[pair] = self.messages.get(pair, 0) + 1
        self.rows += len(readings)

    def add_status(self, pair: Pair, status: Status) -> None:
        held = self.statuses.get(pair)
        if held is None or held.ts <= status.ts:
            self.statuses[pair] = status

    def merge(self, other: Batch) -> None:
        for pair, readings in other.readings.items():
            self.readings.setdefault(pair, []).extend(readings)
        for pair, n in other.messages.items():
            self.messages[pair] = self.messages.get(pair, 0) + n
        for pair, status in other.statuses.items():
            self.add_status(pair, status)
        self.acks.extend(other.acks)
        self.rows += other.rows
        self.started = min(self.started, other.started)


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int
    rejected_messages: int
    statuses: int
    conflicts: tuple[DeviceConflict, ...] = ()


_STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_stage"
    " (ts timestamptz NOT NULL, device_id integer NOT NULL, metric_id smallint NOT NULL,"
    " value double precision NOT NULL) ON COMMIT DELETE ROWS"
)
_COPY = "COPY ingest_stage (ts, device_id, metric_id, value) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["timestamptz", "int4", "int2", "float8"]
_INSERT = (
    "INSERT INTO telemetry (ts, device_id, metric_id, value)"
    " SELECT ts, device_id, metric_id, value FROM ingest_stage ORDER BY device_id, ts, metric_id"
    " ON CONFLICT DO NOTHING"
)
# Marks every staged (minute, device) pair: on a partial redelivery that may recompute a bucket that
# did not change, which is harmless; a batch that inserted nothing marks nothing.
_MARK = (
    "SELECT mark_rollups_dirty(array_agg(b), array_agg(d)) FROM"
    " (SELECT DISTINCT time_bucket('1 minute', ts) AS b, device_id AS d FROM ingest_stage) p"
)
# last_seen is the newest reading's time (capped at now, against devices with a clock in the future).
_LAST_SEEN = (
    "WITH s AS (SELECT device_id, least(max(ts), now()) AS m FROM ingest_stage GROUP BY device_id),"
    " locked AS (SELECT d.id, s.m FROM devices d JOIN s ON s.device_id = d.id"
    "  WHERE d.last_seen IS NULL OR d.last_seen < s.m ORDER BY d.id FOR NO KEY UPDATE OF d)"
    " UPDATE devices d SET last_seen = greatest(d.last_seen, locked.m) FROM locked WHERE d.id = locked.id"
)
_STATUS = (
    "WITH s AS (SELECT * FROM unnest(%s::integer[], %s::text[], %s::text[], %s::timestamptz[])"
    "  AS u(id, state, reason, ts)),"
    " locked AS (SELECT d.id, s.state, s.reason, s.ts FROM devices d JOIN s ON s.id = d.id"
    "  WHERE d.status_at IS NULL OR d.status_at <= s.ts ORDER BY d.id FOR NO KEY UPDATE OF d)"
    " UPDATE devices d SET status = locked.state, status_reason = locked.reason, status_at = locked.ts"
    " FROM locked WHERE d.id = locked.id AND (d.status_at IS NULL OR d.status_at <= locked.ts)"
)


class TelemetryWriter:
    """Owns one connection (reopened after failures). ``write`` raises on any database error and leaves
    retrying to the caller: nothing of a failed batch is committed."""

    def __init__(
        self, dsn: str, resolver: DeviceResolver, *, application_name: str = "lishui-ingest"
    ) -> None:
        self._dsn = dsn
        self._resolver = resolver
        self._application_name = application_name
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self.close()
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, application_name=self._application_name, connect_timeout=5
            )
            await conn.execute(_STAGE_DDL)
            await conn.commit()
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                log.debug("closing a broken connection failed", exc_info=True)

    async def write(self, batch: Batch) -> WriteResult:
        try:
            return await self._write(batch)
        except BaseException:
            # Whatever happened mid-transaction, start from a fresh connection next time.
            await self.close()
            raise

    async def _write(self, batch: Batch) -> WriteResult:
        conn = await self._connection()
        pairs = list(batch.readings.keys() | batch.statuses.keys())
        ids = await self._resolver.resolve_many(conn, pairs)
        rejected = 0
        conflicts = tuple(c for c in ids.values() if isinstance(c, DeviceConflict))
        rows: list[tuple[datetime, int, int, float]] = []
        for pair, readings in batch.readings.items():
            device_id = ids[pair]
            if isinstance(device_id, DeviceConflict):
                rejected += batch.messages.get(pair, 0)
                continue
            rows.extend([(ts, device_id, metric_id, value) for ts, metric_id, value in readings])
        statuses = sorted(
            (device_id, s.state.value, s.reason, s.ts)
            for pair, s in batch.statuses.items()
            if not isinstance(device_id := ids[pair], DeviceConflict)
        )
        rejected += len(batch.statuses) - len(statuses)
        inserted = 0
        async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            if rows:
                async with cur.copy(_COPY) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in rows:
                        await copy.write_row(row)
                await cur.execute(_INSERT)
                inserted = max(cur.rowcount, 0)
                if inserted:
                    await cur.execute(_MARK)
                    await cur.execute(_LAST_SEEN)
            if statuses:
                await cur.execute(_STATUS, [list(col) for col in zip(*statuses, strict=True)])
        return WriteResult(inserted, len(rows) - inserted, rejected, len(statuses), conflicts)
