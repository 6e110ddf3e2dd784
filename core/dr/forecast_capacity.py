"""The day-ahead capacity register: peak-shaving capacity per town and total for a window of a coming
day, against the county's aim (``report.COUNTY_AIM_KW``).

The same resource models as the live register (``report.capacity_register``), each put at the operating
point the forecasts expect instead of its latest reading:

- flexible loads and EV charging: the device's forecast mean load over the window, from its own history
  (``forecast.forecast_load``), so curtailable load scales with the load expected then (bounded by the
  load's own limit as last reported, ``max_curtailable_w``, where it reports one);
- hydro: the forecast mean output over the window; its headroom up to rated is bounded by the water as
  last reported (reservoir level and inflow, no older than ``state_max_age_s``), assumed unchanged;
- storage, by its SoC plan: charged to ``planned_soc_pct`` (attribute; else its ``soc_max_pct``, 95)
  by the window, idle before it; no history needed.

Load history leaves out past event days, as the issued forecasts do. A device without the history
for a forecast is left out with the reason, as are tier 0 (protected)
devices. The window is given, or else the peak of the county's latest load forecast for the day.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from core.dr.baselines import SLOT_MIN, SLOTS_PER_DAY, Calendar, InsufficientHistory
from core.dr.fleet import DeviceInfo, ScopeFilter, build_resources, load_devices, read_latest
from core.dr.forecast import (
    PLAIN_WEEK,
    LoadForecastSpec,
    forecast_load,
    peak_window,
    slot_start,
)
from core.dr.forecast_store import group_profiles, read_forecasts
from core.dr.program_baseline import past_event_days
from core.dr.report import COUNTY_AIM_KW, CapacityRegister
from core.dr.resources import Direction, ResourceKind, Window

__all__ = ["DayAheadRegister", "NoWindow", "day_ahead_register", "forecast_peak"]

FORECAST_KINDS = (ResourceKind.FLEXIBLE_LOAD, ResourceKind.EV_CHARGING, ResourceKind.HYDRO)
LATEST_KINDS = (ResourceKind.HYDRO, ResourceKind.STORAGE, ResourceKind.FLEXIBLE_LOAD)
# What a flexible load's latest reading still says about the window: its own limits, not its operating
# point.
LOAD_LIMITS = ("max_curtailable_w", "max_raisable_w")
_SPEC = LoadForecastSpec()


class NoWindow(LookupError):
    """No window was given and there is no county load forecast to find the peak in."""


@dataclass(frozen=True, slots=True)
class DayAheadRegister:
    day: date
    starts_at: datetime
    ends_at: datetime
    window_source: str  # "given" or "forecast peak"
    register: CapacityRegister
    county_load_kw: float | None  # the county's forecast mean load over the window, where issued
    county_pv_kw: float | None


async def forecast_peak(conn: psycopg.AsyncConnection[Any], day: date, slots: int) -> int:
    """The first interval of the ``slots`` highest consecutive intervals of the county load forecast."""
    county = await read_forecasts(conn, day, "load", county_only=True)
    if not county:
        raise NoWindow(f"no county load forecast for {day}: issue one, or give the window")
    return peak_window(np.asarray(county[0].kw), slots)


async def _county_means(
    conn: psycopg.AsyncConnection[Any], day: date, window: slice
) -> tuple[float | None, float | None]:
    means: dict[str, float] = {}
    for s in await read_forecasts(conn, day, county_only=True):
        means[s.kind] = float(np.mean(s.kw[window]))
    return means.get("load"), means.get("pv")


def _planned_state(d: DeviceInfo, latest: dict[str, float]) -> dict[str, float]:
    """Storage at the window: charged to its plan, idle; capacity and limits as last reported."""
    plan = d.attr("planned_soc_pct", d.attr("soc_max_pct", 95.0))
    kept = {
        k: v for k, v in latest.items() if k in ("energy_capacity_wh", "discharge_limit_w", "charge_limit_w")
    }
    return kept | {"active_power_w": 0.0, "soc_pct": plan}


async def day_ahead_register(
    conn: psycopg.AsyncConnection[Any],
    day: date,
    start_slot: int | None = None,
    slots: int = 4,
    calendar: Calendar = PLAIN_WEEK,
    spec: LoadForecastSpec = _SPEC,
    state_max_age_s: float = 86_400.0,
) -> DayAheadRegister:
    """Peak-shaving capacity for ``slots`` 15-minute intervals of ``day`` from ``start_slot`` (default:
    the county load forecast's peak), sustainable over the whole window."""
    if not 1 <= slots <= SLOTS_PER_DAY or (
        start_slot is not None and not 0 <= start_slot <= SLOTS_PER_DAY - slots
    ):
        raise ValueError("the window must lie within the day")
    source = "given"
    if start_slot is None:
        start_slot, source = await forecast_peak(conn, day, slots), "forecast peak"
    window = slice(start_slot, start_slot + slots)
    devices = await load_devices(conn, ScopeFilter())
    needs_history = [d for d in devices if d.resource_kind in FORECAST_KINDS and d.tier != 0]
    forecast_ids = {d.id for d in needs_history}
    first, last = (
        day - timedelta(days=spec.lookback_days + spec.level_reference_days),
        day - timedelta(days=1),
    )
    history = await group_profiles(conn, {d.id: [d.id] for d in needs_history}, first, last)
    event_days = await past_event_days(conn, first, last)
    latest = await read_latest(
        conn,
        (d.id for d in devices if d.resource_kind in LATEST_KINDS),
        state_max_age_s,
    )
    planned: dict[int, dict[str, float]] = {}
    no_history: dict[str, str] = {}
    for d in devices:
        if d.resource_kind is ResourceKind.STORAGE:
            planned[d.id] = _planned_state(d, latest.get(d.id, {}))
        elif d.id in forecast_ids:
            try:
                profile = forecast_load(history[d.id], day, calendar, spec, event_days).kw
            except InsufficientHistory as err:
                no_history[d.key] = f"no day-ahead forecast: {err}"
                continue
            state = dict(latest.get(d.id, {}))
            if d.resource_kind is ResourceKind.FLEXIBLE_LOAD:
                state = {k: v for k, v in state.items() if k in LOAD_LIMITS}
            planned[d.id] = state | {
                "active_power_w": float(np.mean(profile[window])) * 1000,
                "curtailment_w": 0.0,
            }
    snapshot = build_resources(devices, planned)
    horizon = Window(slots * SLOT_MIN)
    towns: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total = 0.0
    for rid, model in snapshot.resources.items():
        kw = model.flexibility(Direction.REDUCE, horizon).available_kw
        towns[snapshot.devices[rid].town or "unknown"][model.kind.value] += kw
        total += kw
    register = CapacityRegister(
        {town: dict(kinds) for town, kinds in sorted(towns.items())},
        total,
        COUNTY_AIM_KW,
        len(snapshot.resources),
        snapshot.excluded | no_history,
    )
    load_kw, pv_kw = await _county_means(conn, day, window)
    return DayAheadRegister(
        day,
        slot_start(day, window.start),
        slot_start(day, window.stop),
        source,
        register,
        load_kw,
        pv_kw,
    )
