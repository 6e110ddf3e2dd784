"""What the VEN can promise for one part of a VTN's event: the capacity it opts in or out by.

By default, the capacity available now (live telemetry over the part's remaining length): the
capacity register for county-wide peak shaving, the same resource models over the part's scope and
direction otherwise. A county-wide peak-shaving part that starts on a later local day, once that day's
forecasts have been issued (by the leader's daily run or through the API), is judged by the day-ahead
capacity register over its window instead (``core.dr.forecast_capacity``: each device at the operating point
its forecast expects then, not at the one it has now). Without those forecasts, or for a window that
runs past local midnight (the register covers one day), it falls back to now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from core.dr.baselines import CHINA, SLOT_MIN, SLOTS_PER_DAY, Calendar
from core.dr.events import EventScope, EventSpec
from core.dr.fleet import FleetSnapshot
from core.dr.forecast_capacity import day_ahead_register
from core.dr.report import capacity_register
from core.dr.resources import Direction, Window
from dr_controller.forecast_schedule import last_issued

__all__ = ["DAY_AHEAD", "NOW", "Capacity", "capacity_for"]

NOW = "now"
DAY_AHEAD = "by the day-ahead register"
_SLOT = timedelta(minutes=SLOT_MIN)


@dataclass(frozen=True, slots=True)
class Capacity:
    kw: float
    basis: str  # NOW or DAY_AHEAD: said in an opt-out's reason


async def _day_ahead_kw(
    conn: psycopg.AsyncConnection[Any], spec: EventSpec, now: datetime, calendar: Calendar
) -> float | None:
    """The day-ahead register's total over the part's window; None where it does not apply."""
    starts, ends = spec.starts_at.astimezone(CHINA), spec.ends_at.astimezone(CHINA)
    day = starts.date()
    if day <= now.astimezone(CHINA).date() or await last_issued(conn, day) is None:
        return None
    start_slot = (starts - datetime.combine(day, datetime.min.time(), CHINA)) // _SLOT
    slots = (ends - starts) // _SLOT
    if start_slot + slots > SLOTS_PER_DAY:
        return None
    register = await day_ahead_register(conn, day, start_slot, slots, calendar)
    return register.register.total_kw


async def capacity_for(
    conn: psycopg.AsyncConnection[Any],
    snapshot: FleetSnapshot,
    spec: EventSpec,
    now: datetime,
    *,
    calendar: Calendar,
    max_age_s: float,
) -> Capacity:
    """How much of ``spec``'s direction its scope can give over the rest of its window; ``snapshot`` is
    the scope now."""
    minutes = (spec.ends_at - max(spec.starts_at, now)).total_seconds() / 60
    if spec.scope is EventScope.COUNTY and spec.direction is Direction.REDUCE:
        day_ahead = await _day_ahead_kw(conn, spec, now, calendar)
        if day_ahead is not None:
            return Capacity(day_ahead, DAY_AHEAD)
        register = await capacity_register(conn, max_age_s, horizon_min=minutes)
        return Capacity(register.total_kw, NOW)
    window = Window(minutes)
    kw = sum(m.flexibility(spec.direction, window).available_kw for m in snapshot.resources.values())
    return Capacity(kw, NOW)
