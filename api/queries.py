"""The API's SQL. Every query that reaches sites, devices or telemetry goes through ``_visible`` (the
tenant filter lives there and nowhere else); telemetry is only reached via ``get_device``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.models import Agg

MAX_POINTS = 10_000
# TimescaleDB's default origin for time_bucket() on timestamptz (a Monday, midnight UTC): buckets of
# whole days or weeks start at midnight UTC, weeks on Mondays.
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)

_BUCKET_RE = re.compile(r"([1-9][0-9]{0,6})(s|m|h|d|w)\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Scope:
    """The tenants a caller may see; ``None`` = all (county supervisors, and everyone until auth lands)."""

    tenant_ids: frozenset[int] | None = None


def _visible(scope: Scope, params: dict[str, Any], site_alias: str = "s") -> str:
    """The tenant filter, as a SQL condition on the sites table aliased ``site_alias``."""
    if scope.tenant_ids is None:
        return "TRUE"
    params["scope_tenants"] = sorted(scope.tenant_ids)
    return f"{site_alias}.tenant_id = ANY(%(scope_tenants)s)"


class InvalidQuery(ValueError):
    """A request the API understands but cannot serve: answered 422 with this message."""


def parse_bucket(text: str) -> timedelta:
    match = _BUCKET_RE.match(text.strip())
    if not match:
        raise InvalidQuery(f"bucket {text!r} is not like 30s, 1m, 15m, 1h, 1d or 1w")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def floor_bucket(ts: datetime, width: timedelta) -> datetime:
    return ORIGIN + ((ts - ORIGIN) // width) * width


def ceil_bucket(ts: datetime, width: timedelta) -> datetime:
    low = floor_bucket(ts, width)
    return low if low == ts else low + width


async def _all(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def list_towns(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    return await _all(conn, "SELECT id, key, name_zh, name_en FROM towns ORDER BY id", {})


_SITE_SELECT = """
SELECT s.key, s.name, te.key AS tenant, tw.key AS town, s.kind, s.tier, s.feeder, s.latitude, s.longitude,
       (SELECT count(*) FROM devices d WHERE d.site_id = s.id) AS device_count
FROM sites s
LEFT JOIN tenants te ON te.id = s.tenant_id
LEFT JOIN towns tw ON tw.id = s.town_id
"""


async def list_sites(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    town: str | None = None,
    tenant: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"town": town, "tenant": tenant, "limit": limit, "offset": offset}
    sql = (
        _SITE_SELECT + f" WHERE {_visible(scope, params)}"
        " AND (%(town)s::text IS NULL OR tw.key = %(town)s)"
        " AND (%(tenant)s::text IS NULL OR te.key = %(tenant)s)"
        " ORDER BY s.key LIMIT %(limit)s OFFSET %(offset)s"
    )
    return await _all(conn, sql, params)


async def get_site(conn: psycopg.AsyncConnection[Any], scope: Scope, key: str) -> dict[str, Any] | None:
    params: dict[str, Any] = {"key": key}
    rows = await _all(conn, _SITE_SELECT + f" WHERE s.key = %(key)s AND {_visible(scope, params)}", params)
    return rows[0] if rows else None


_DEVICE_SELECT = """
SELECT d.id, d.key, s.key AS site, d.kind, d.profile, d.vendor, d.model, d.rated_power_w, d.lifecycle, d.tier,
       d.attributes, d.status, d.status_reason, d.status_at, d.last_seen
FROM devices d JOIN sites s ON s.id = d.site_id
"""


async def list_devices(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    site: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    lifecycle: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {
        "site": site,
        "kind": kind,
        "status": status,
        "lifecycle": lifecycle,
        "limit": limit,
        "offset": offset,
    }
    sql = (
        _DEVICE_SELECT + f" WHERE {_visible(scope, params)}"
        " AND (%(site)s::text IS NULL OR s.key = %(site)s)"
        " AND (%(kind)s::text IS NULL OR d.kind = %(kind)s)"
        " AND (%(status)s::text IS NULL OR d.status = %(status)s)"
        " AND (%(lifecycle)s::text IS NULL OR d.lifecycle = %(lifecycle)s)"
        " ORDER BY d.key LIMIT %(limit)s OFFSET %(offset)s"
    )
    return await _all(conn, sql, params)


async def get_device(conn: psycopg.AsyncConnection[Any], scope: Scope, key: str) -> dict[str, Any] | None:
    """The device if the scope may see it: the one door to a device's telemetry."""
    params: dict[str, Any] = {"key": key}
    rows = await _all(conn, _DEVICE_SELECT + f" WHERE d.key = %(key)s AND {_visible(scope, params)}", params)
    return rows[0] if rows else None


async def list_metrics(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    return await _all(conn, "SELECT id, name, unit, kind, description FROM metrics ORDER BY id", {})


async def latest(conn: psycopg.AsyncConnection[Any], device_id: int) -> list[dict[str, Any]]:
    """Newest reading per metric: one backward index probe per catalogue metric on the primary key
    (device_id, metric_id, ts), newest chunk first."""
    return await _all(
        conn,
        """
        SELECT m.name AS metric, m.unit, l.ts, l.value
        FROM metrics m
        CROSS JOIN LATERAL (
            SELECT t.ts, t.value FROM telemetry t
            WHERE t.device_id = %(device_id)s AND t.metric_id = m.id
            ORDER BY t.ts DESC LIMIT 1
        ) l
        ORDER BY m.id
        """,
        {"device_id": device_id},
    )


_RAW_AGG: dict[str, str] = {
    "avg": "avg(t.value)",
    "min": "min(t.value)",
    "max": "max(t.value)",
    "sum": "sum(t.value)",
    "count": "count(*)::float8",
    "last": "last(t.value, t.ts)",
}
_ROLLUP_AGG: dict[str, str] = {
    "avg": "sum(r.sum) / sum(r.n)",
    "min": "min(r.min)",
    "max": "max(r.max)",
    "sum": "sum(r.sum)",
    "count": "sum(r.n)::float8",
    "last": "last(r.last, r.last_ts)",
}


@dataclass(frozen=True)
class SeriesPlan:
    width: timedelta
    start: datetime  # first bucket
    end: datetime  # end of the last bucket
    rollup: str | None  # telemetry_15m, telemetry_1m or None (raw only)

    @property
    def points(self) -> int:
        return (self.end - self.start) // self.width


def plan_series(bucket: str, start: datetime, end: datetime) -> SeriesPlan:
    width = parse_bucket(bucket)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    if start >= end:
        raise InvalidQuery("start must be before end")
    plan_start, plan_end = floor_bucket(start, width), ceil_bucket(end, width)
    rollup = None
    if width % timedelta(minutes=15) == timedelta(0):
        rollup = "telemetry_15m"
    elif width % timedelta(minutes=1) == timedelta(0):
        rollup = "telemetry_1m"
    plan = SeriesPlan(width, plan_start, plan_end, rollup)
    if plan.points > MAX_POINTS:
        raise InvalidQuery(
            f"{plan.points} buckets of {bucket} between start and end; at most {MAX_POINTS}:"
            " ask for a larger bucket"
        )
    return plan


async def series(
    conn: psycopg.AsyncConnection[Any], device_id: int, metric_id: int, agg: Agg, plan: SeriesPlan
) -> tuple[list[dict[str, Any]], datetime | None]:
    """The bucketed series, and the time up to which it came from the rollup.

    Rollups lag raw data by up to one refresh. Buckets are served from the rollup only while they lie
    before the device's oldest dirty marker (rounded down to the bucket), the rest from raw telemetry,
    all in one statement, so one snapshot: a rollup bucket in the answer is never stale, whatever the
    refresh is doing.
    """
    params: dict[str, Any] = {
        "width": plan.width,
        "start": plan.start,
        "end": plan.end,
        "device_id": device_id,
        "metric_id": metric_id,
    }
    raw_part = f"""
        SELECT time_bucket(%(width)s, t.ts) AS ts, {_RAW_AGG[agg]} AS value
        FROM telemetry t, cut
        WHERE t.device_id = %(device_id)s AND t.metric_id = %(metric_id)s
          AND t.ts >= %(start)s AND t.ts >= cut.at AND t.ts < %(end)s
        GROUP BY 1"""
    if plan.rollup is None:
        sql = (
            "WITH cut AS (SELECT '-infinity'::timestamptz AS at)"
            f" SELECT ts, value, NULL::timestamptz AS cut FROM ({raw_part}) raw ORDER BY ts"
        )
    else:
        dirty = "SELECT min(bucket) FROM rollup_dirty_1m WHERE device_id = %(device_id)s"
        if plan.rollup == "telemetry_15m":
            dirty = (
                f"SELECT least(({dirty}),"
                " (SELECT min(bucket) FROM rollup_dirty_15m WHERE device_id = %(device_id)s))"
            )
        sql = f"""
        WITH cut AS (
            SELECT coalesce(time_bucket(%(width)s, ({dirty})), 'infinity'::timestamptz) AS at
        ), rolled AS (
            SELECT time_bucket(%(width)s, r.bucket) AS ts, {_ROLLUP_AGG[agg]} AS value
            FROM {plan.rollup} r, cut
            WHERE r.device_id = %(device_id)s AND r.metric_id = %(metric_id)s
              AND r.bucket >= %(start)s AND r.bucket < least(%(end)s, cut.at)
            GROUP BY 1
        ), raw AS ({raw_part})
        SELECT x.ts, x.value, nullif(cut.at, 'infinity') AS cut
        FROM (SELECT * FROM rolled UNION ALL SELECT * FROM raw) x, cut
        ORDER BY x.ts
        """
    rows = await _all(conn, sql, params)
    if plan.rollup is None or not rows:
        return rows, None
    # NULL cut: no dirty marker, every bucket came from the rollup.
    cut: datetime = rows[0]["cut"] or plan.end
    return rows, min(max(cut, plan.start), plan.end)
