"""Day-ahead forecasts from the database: history from ``telemetry_15m``, issued series into
``forecasts`` (migration 0012), and the error report of a day that is over.

What a site's load is (the registry does not say where a meter sits, so this is a convention):

- a site with meters: the sum of its meters (import at the grid connection) plus the output of its own
  PV inverters, which sit behind those meters; the load forecast is then free of the weather, and
  PV is forecast on its own (net import = load − PV);
- a site without meters: the sum of its loads and charge points;
- a site with neither (a hydro station): no load series.

Load history leaves out the days a demand-response event ran (``program_baseline.past_event_days``,
whatever the event's scope, as the program baselines do): a curtailed or raised day is no guide to
normal load. PV history keeps them (no event touches PV output).

The county series is the sum of the site series issued with it, not a forecast of the county's
aggregate history: a site missing data then costs only its own series instead of every interval of
the aggregate (an aggregate interval needs every device), the towns and the county add up, and
the errors of the sites partly cancel in the sum anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar

import numpy as np
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.dr.baselines import CHINA, SLOT_MIN, SLOTS_PER_DAY, Calendar, InsufficientHistory
from core.dr.forecast import (
    LIXIAN,
    METHOD_LOAD,
    METHOD_PV,
    PLAIN_WEEK,
    FloatArray,
    ForecastError,
    LoadForecastSpec,
    PvArray,
    calibrate_pv,
    cloud_slots,
    daylight_slots,
    forecast_load,
    forecast_pv,
    load_error,
    pv_basis,
    pv_error,
)
from core.dr.program_baseline import past_event_days
from core.metrics import metric

__all__ = [
    "ErrorRow",
    "IssuedForecast",
    "NotOver",
    "SiteDevices",
    "StoredSeries",
    "error_report",
    "group_profiles",
    "issue_day_ahead",
    "load_sites",
    "local_today",
    "read_forecasts",
]

log = logging.getLogger(__name__)

Kind = Literal["load", "pv"]
K = TypeVar("K")
PV_CALIBRATION_DAYS = 21
DEFAULT_LOAD_SPEC = LoadForecastSpec()


class NotOver(ValueError):
    """The day asked about is not over yet."""


def local_today(now: datetime | None = None) -> date:
    return (now or datetime.now(CHINA)).astimezone(CHINA).date()


def _day_start(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), CHINA)


@dataclass(frozen=True, slots=True)
class SiteDevices:
    site_id: int
    key: str
    town: str | None
    latitude: float
    longitude: float
    meters: tuple[int, ...] = ()
    consumers: tuple[int, ...] = ()  # loads and charge points
    pv: tuple[tuple[int, PvArray], ...] = ()

    @property
    def load_devices(self) -> tuple[int, ...]:
        if self.meters:
            return self.meters + tuple(d for d, _ in self.pv)
        return self.consumers

    @property
    def pv_rated_kw(self) -> float:
        return sum(a.rated_kw for _, a in self.pv)


def _attr(attributes: Mapping[str, Any], name: str, default: float) -> float:
    value = attributes.get(name)
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else default


def _pv_array(rated_w: float, attributes: Mapping[str, Any]) -> PvArray:
    tilt = _attr(attributes, "tilt_deg", 20.0)
    azimuth = _attr(attributes, "azimuth_deg", 180.0)
    if not (0 <= tilt <= 90 and 0 <= azimuth < 360):
        tilt, azimuth = 20.0, 180.0
    return PvArray(rated_w / 1000, tilt, azimuth)


async def load_sites(conn: psycopg.AsyncConnection[Any]) -> list[SiteDevices]:
    """Every site with operating meters, loads, charge points or PV inverters, with those devices."""
    cur = await conn.execute(
        "SELECT s.id, s.key, t.key, s.latitude, s.longitude, d.id, d.kind,"
        " coalesce(d.rated_power_w, 0), d.attributes"
        " FROM sites s JOIN devices d ON d.site_id = s.id LEFT JOIN towns t ON t.id = s.town_id"
        " WHERE d.lifecycle = 'operating' AND d.kind IN ('meter', 'load', 'charge_point', 'pv_inverter')"
        " ORDER BY s.id, d.id"
    )
    sites: dict[int, dict[str, Any]] = {}
    for site_id, key, town, lat, lon, device_id, kind, rated_w, attributes in await cur.fetchall():
        s = sites.setdefault(
            site_id,
            {
                "site_id": site_id,
                "key": key,
                "town": town,
                "latitude": LIXIAN[0] if lat is None else float(lat),
                "longitude": LIXIAN[1] if lon is None else float(lon),
                "meters": [],
                "consumers": [],
                "pv": [],
            },
        )
        if kind == "meter":
            s["meters"].append(device_id)
        elif kind == "pv_inverter":
            s["pv"].append((device_id, _pv_array(float(rated_w), attributes or {})))
        else:
            s["consumers"].append(device_id)
    return [
        SiteDevices(**(s | {k: tuple(s[k]) for k in ("meters", "consumers", "pv")})) for s in sites.values()
    ]


async def group_profiles(
    conn: psycopg.AsyncConnection[Any],
    groups: Mapping[K, Sequence[int]],
    first_day: date,
    last_day: date,
    metric_name: str = "active_power_w",
) -> dict[K, dict[date, FloatArray]]:
    """Day profiles (kW) of the summed average power of each group of devices, in one query.

    As ``baselines.load_profiles``: an interval counts only when every device of the group has a
    reading in it (a partial sum would look like a drop in load); the others are NaN.
    """
    keys = [k for k, ids in groups.items() if ids]
    sizes = np.array([len(set(groups[k])) for k in keys])
    pairs = [(d, i) for i, k in enumerate(keys) for d in sorted(set(groups[k]))]
    n_days = (last_day - first_day).days + 1
    out = {k: np.full((n_days, SLOTS_PER_DAY), np.nan) for k in keys}
    if pairs and n_days > 0:
        origin = _day_start(first_day)
        cur = await conn.execute(
            "SELECT g.idx, extract(epoch FROM t.bucket - %s)::bigint, sum(t.sum / t.n) / 1000.0, count(*)"
            " FROM unnest(%s::integer[], %s::integer[]) AS g(device_id, idx)"
            " JOIN telemetry_15m t ON t.device_id = g.device_id"
            " WHERE t.metric_id = %s AND t.bucket >= %s AND t.bucket < %s AND t.n > 0"
            " GROUP BY 1, 2",
            (
                origin,
                [d for d, _ in pairs],
                [i for _, i in pairs],
                metric(metric_name).id,
                origin,
                _day_start(last_day + timedelta(days=1)),
            ),
        )
        rows = np.array(await cur.fetchall(), dtype=np.float64).reshape(-1, 4)
        rows = rows[rows[:, 3] == sizes[rows[:, 0].astype(int)]] if len(rows) else rows
        # Asia/Shanghai keeps UTC+8 all year, so an interval's index is its offset from the first
        # midnight in 15-minute steps.
        slot = rows[:, 1].astype(np.int64) // (SLOT_MIN * 60)
        for i, k in enumerate(keys):
            mine = rows[:, 0] == i
            out[k].reshape(-1)[slot[mine]] = rows[mine, 2]
    return {k: {first_day + timedelta(days=j): v[j] for j in range(n_days)} for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class Series:
    site_id: int | None
    kind: Kind
    method: str
    kw: FloatArray
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IssuedForecast:
    issued_at: datetime
    target_day: date
    series: list[Series]
    skipped: dict[str, str] = field(default_factory=dict)  # "site/kind" -> why no series

    def county(self, kind: Kind) -> Series | None:
        return next((s for s in self.series if s.site_id is None and s.kind == kind), None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.floating | np.integer):
        return value.item()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _load_series(
    sites: Sequence[SiteDevices],
    history: Mapping[int, Mapping[date, FloatArray]],
    day: date,
    calendar: Calendar,
    spec: LoadForecastSpec,
    skipped: dict[str, str],
    event_days: Collection[date] = frozenset(),
) -> list[Series]:
    series = []
    for s in sites:
        if not s.load_devices:
            continue
        try:
            fc = forecast_load(history[s.site_id], day, calendar, spec, event_days)
        except InsufficientHistory as err:
            skipped[f"{s.key}/load"] = str(err)
            continue
        detail = {
            "devices": list(s.load_devices),
            "similar_days": list(fc.days_used),
            "weights": [round(w, 4) for w in fc.weights],
            "level": round(fc.level, 4),
        }
        series.append(Series(s.site_id, "load", METHOD_LOAD, fc.kw, detail))
    return series


def _pv_series(
    sites: Sequence[SiteDevices],
    history: Mapping[int, Mapping[date, FloatArray]],
    day: date,
    cloud: FloatArray | None,
) -> list[Series]:
    series = []
    past = [day - timedelta(days=back) for back in range(PV_CALIBRATION_DAYS, 0, -1)]
    for s in sites:
        if not s.pv:
            continue
        arrays = [a for _, a in s.pv]
        observed = history.get(s.site_id, {})
        with_data = [d for d in past if d in observed and not np.isnan(observed[d]).all()]
        basis = pv_basis([*with_data, day], arrays, s.latitude, s.longitude)
        calibration = calibrate_pv(observed, {d: basis[d] for d in with_data})
        kw = forecast_pv(basis[day], s.pv_rated_kw, calibration, cloud)
        light = np.flatnonzero(daylight_slots(basis[day]))
        detail = {
            "devices": [d for d, _ in s.pv],
            "rated_kw": s.pv_rated_kw,
            "daylight": [int(light[0]), int(light[-1]) + 1] if len(light) else [0, 0],
            "performance": round(calibration.performance, 4),
            "typical_index": round(calibration.typical_index, 4),
            "calibration_days": calibration.days,
            "cloud_input": cloud is not None,
        }
        series.append(Series(s.site_id, "pv", METHOD_PV, kw, detail))
    return series


def _county(kind: Kind, members: Sequence[Series], method: str) -> Series | None:
    if not members:
        return None
    detail: dict[str, Any] = {
        "sites": [m.site_id for m in members],
        "devices": sorted({d for m in members for d in m.detail["devices"]}),
    }
    if kind == "pv":
        detail["rated_kw"] = sum(m.detail["rated_kw"] for m in members)
        spans = [m.detail["daylight"] for m in members if m.detail["daylight"][1] > 0]
        detail["daylight"] = [min(a for a, _ in spans), max(b for _, b in spans)] if spans else [0, 0]
    return Series(None, kind, method, np.sum([m.kw for m in members], axis=0), detail)


async def issue_day_ahead(
    conn: psycopg.AsyncConnection[Any],
    target_day: date,
    cloud_cover: Sequence[float] | None = None,
    calendar: Calendar = PLAIN_WEEK,
    spec: LoadForecastSpec = DEFAULT_LOAD_SPEC,
    issued_at: datetime | None = None,
) -> IssuedForecast:
    """Forecast ``target_day`` for every site (and the county) from the history before it, and store
    the series in one transaction. ``cloud_cover``: 24 hourly or 96 quarter-hourly fractions;
    ``issued_at``: the issuer's clock (default: the database's)."""
    cloud = cloud_slots(cloud_cover) if cloud_cover is not None else None
    sites = await load_sites(conn)
    first = target_day - timedelta(days=spec.lookback_days + spec.level_reference_days)
    last = target_day - timedelta(days=1)
    load_history = await group_profiles(conn, {s.site_id: s.load_devices for s in sites}, first, last)
    pv_history = await group_profiles(
        conn,
        {s.site_id: [d for d, _ in s.pv] for s in sites},
        target_day - timedelta(days=PV_CALIBRATION_DAYS),
        last,
    )
    event_days = await past_event_days(conn, first, last)
    skipped: dict[str, str] = {}
    loads = _load_series(sites, load_history, target_day, calendar, spec, skipped, event_days)
    pvs = _pv_series(sites, pv_history, target_day, cloud)
    series = loads + pvs
    county: list[tuple[Kind, list[Series], str]] = [("load", loads, METHOD_LOAD), ("pv", pvs, METHOD_PV)]
    for kind, members, method in county:
        total = _county(kind, members, method)
        if total is not None:
            if kind == "load":
                total.detail["event_days_excluded"] = sorted(event_days)
            series.append(total)
    if cloud is not None:
        for s in series:
            if s.kind == "pv" and s.site_id is None:
                s.detail["cloud_cover"] = [round(float(c), 4) for c in cloud[::4]]
    async with conn.transaction():
        if issued_at is None:
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
            assert row is not None
            issued_at = row[0]
        async with conn.cursor() as c:
            await c.executemany(
                "INSERT INTO forecasts (issued_at, target_day, site_id, kind, method, kw, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        issued_at,
                        target_day,
                        s.site_id,
                        s.kind,
                        s.method,
                        [float(v) for v in s.kw],
                        Jsonb(_jsonable(s.detail)),
                    )
                    for s in series
                ],
            )
    log.info(
        "day-ahead forecast issued",
        extra={"target_day": target_day.isoformat(), "series": len(series), "skipped": len(skipped)},
    )
    return IssuedForecast(issued_at, target_day, series, skipped)


@dataclass(frozen=True, slots=True)
class StoredSeries:
    id: int
    issued_at: datetime
    target_day: date
    site_id: int | None
    site: str | None  # None: the county
    town: str | None
    kind: Kind
    method: str
    kw: list[float]
    detail: dict[str, Any]


async def read_forecasts(
    conn: psycopg.AsyncConnection[Any],
    day: date,
    kind: Kind | None = None,
    site_key: str | None = None,
    county_only: bool = False,
) -> list[StoredSeries]:
    """The latest issued series of ``day`` per site and kind (the county first)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT DISTINCT ON (f.kind, f.site_id) f.id, f.issued_at, f.target_day, f.site_id,"
            " s.key AS site, t.key AS town, f.kind, f.method, f.kw, f.detail"
            " FROM forecasts f LEFT JOIN sites s ON s.id = f.site_id LEFT JOIN towns t ON t.id = s.town_id"
            " WHERE f.target_day = %(day)s AND (%(kind)s::text IS NULL OR f.kind = %(kind)s)"
            "   AND (%(site)s::text IS NULL OR s.key = %(site)s) AND (NOT %(county)s OR f.site_id IS NULL)"
            " ORDER BY f.kind, f.site_id NULLS FIRST, f.issued_at DESC",
            {"day": day, "kind": kind, "site": site_key, "county": county_only},
        )
        rows = await cur.fetchall()
    return [StoredSeries(**row) for row in rows]


@dataclass(frozen=True, slots=True)
class ErrorRow:
    series: StoredSeries
    actual_kw: list[float | None]  # None: no complete reading for the interval
    error: ForecastError


async def error_report(
    conn: psycopg.AsyncConnection[Any], day: date, now: datetime | None = None
) -> list[ErrorRow]:
    """Each latest series of ``day`` against what the same devices did (``telemetry_15m``)."""
    if _day_start(day + timedelta(days=1)) > (now or datetime.now(CHINA)):
        raise NotOver(f"{day} is not over yet: its error can be reported from the next day on")
    series = await read_forecasts(conn, day)
    actual = await group_profiles(conn, {s.id: s.detail.get("devices", []) for s in series}, day, day)
    rows = []
    for s in series:
        a = actual.get(s.id, {}).get(day, np.full(SLOTS_PER_DAY, np.nan))
        f = np.asarray(s.kw, dtype=np.float64)
        if s.kind == "load":
            err = load_error(a, f)
        else:
            start, end = s.detail.get("daylight", [0, 0])
            light = np.zeros(SLOTS_PER_DAY)
            light[start:end] = 1.0
            err = pv_error(a, f, float(s.detail.get("rated_kw", 0.0)), light)
        rows.append(ErrorRow(s, [float(v) if np.isfinite(v) else None for v in a], err))
    return rows
