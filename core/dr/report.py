"""Reports from the controller's tables: the per-15-minute settlement of an event, and the capacity
register (peak-shaving capacity available now, per town and total, against the county's aim)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core.dr.baselines import SLOT_MIN
from core.dr.fleet import ScopeFilter, TelemetryMeter
from core.dr.resources import Direction, Window
from core.dr.settlement import ResourceSeries, SettlementReport, settle

__all__ = ["COUNTY_AIM_KW", "CapacityRegister", "IntervalRow", "capacity_register", "event_report"]

COUNTY_AIM_KW = 18_000.0
INTERVAL = timedelta(minutes=SLOT_MIN)


@dataclass(frozen=True, slots=True)
class IntervalRow:
    starts_at: datetime
    target_kw: float | None  # mean over the interval's cycles; None before the controller measured it
    delivered_kw: float | None
    cycles: int

    @property
    def performance(self) -> float | None:
        if self.target_kw is None or self.delivered_kw is None or self.target_kw <= 0:
            return None
        return self.delivered_kw / self.target_kw


async def _interval_means(
    conn: psycopg.AsyncConnection[Any], event_id: int, starts_at: datetime
) -> dict[int, tuple[float, float, int]]:
    cur = await conn.execute(
        "SELECT floor(extract(epoch FROM ts - %s) / %s)::int AS slot, avg(target_kw), avg(delivered_kw),"
        " count(*) FROM dr_measurements WHERE event_id = %s GROUP BY 1 ORDER BY 1",
        (starts_at, SLOT_MIN * 60, event_id),
    )
    return {int(s): (float(t), float(d), int(n)) for s, t, d, n in await cur.fetchall()}


async def _resource_series(
    conn: psycopg.AsyncConnection[Any], event_id: int, starts_at: datetime, slots: int
) -> dict[str, ResourceSeries]:
    cur = await conn.execute(
        "SELECT m.resource_id, floor(extract(epoch FROM m.ts - %s) / %s)::int, avg(m.measured_kw),"
        " avg(m.dispatch_kw), r.reference_kw, r.produces"
        " FROM dr_resource_measurements m JOIN dr_references r USING (event_id, resource_id)"
        " WHERE m.event_id = %s GROUP BY 1, 2, r.reference_kw, r.produces",
        (starts_at, SLOT_MIN * 60, event_id),
    )
    rows: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    meta: dict[str, tuple[float, bool]] = {}
    for rid, slot, measured, dispatched, reference, produces in await cur.fetchall():
        if 0 <= slot < slots:
            rows[rid][int(slot)] = (float(measured), float(dispatched))
            meta[rid] = (float(reference), bool(produces))
    series = {}
    for rid, by_slot in rows.items():
        reference, produces = meta[rid]
        # An interval the controller did not measure counts as no response and no commitment.
        measured = [by_slot.get(i, (reference, 0.0))[0] for i in range(slots)]
        committed = [by_slot.get(i, (reference, 0.0))[1] for i in range(slots)]
        series[rid] = ResourceSeries([reference] * slots, measured, produces, committed)
    return series


async def event_report(
    conn: psycopg.AsyncConnection[Any], event: dict[str, Any]
) -> tuple[list[IntervalRow], SettlementReport]:
    """Delivered against target per 15-minute interval (aggregate, as the controller measured it against
    the program baseline), and the per-resource settlement (each against its activation reference)."""
    starts_at, ends_at = event["starts_at"], event["ends_at"]
    slots = int((ends_at - starts_at) / INTERVAL)
    means = await _interval_means(conn, event["id"], starts_at)
    intervals = []
    for i in range(slots):
        t, d, n = means.get(i, (None, None, 0))
        intervals.append(IntervalRow(starts_at + i * INTERVAL, t, d, n))
    direction = Direction.REDUCE if event["kind"] == "peak_shaving" else Direction.RAISE
    targets = [row.target_kw or 0.0 for row in intervals]
    settlement = settle(direction, targets, await _resource_series(conn, event["id"], starts_at, slots))
    return intervals, settlement


@dataclass(frozen=True, slots=True)
class CapacityRegister:
    towns: dict[str, dict[str, float]]  # town key -> resource kind -> kW available
    total_kw: float
    aim_kw: float
    resources: int
    excluded: dict[str, str]


async def capacity_register(
    conn: psycopg.AsyncConnection[Any], max_age_s: float = 60.0, horizon_min: float = 60.0
) -> CapacityRegister:
    """Peak-shaving capacity available now, sustainable for ``horizon_min``, from live telemetry."""
    snapshot = await TelemetryMeter(conn, ScopeFilter(), max_age_s).snapshot()
    window = Window(horizon_min)
    towns: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total = 0.0
    for rid, model in snapshot.resources.items():
        kw = model.flexibility(Direction.REDUCE, window).available_kw
        towns[snapshot.devices[rid].town or "unknown"][model.kind.value] += kw
        total += kw
    return CapacityRegister(
        {town: dict(kinds) for town, kinds in sorted(towns.items())},
        total,
        COUNTY_AIM_KW,
        len(snapshot.resources),
        snapshot.excluded,
    )
