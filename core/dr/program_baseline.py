"""An event's program baseline for its loads: the method the program names (``dr_events.baseline``),
computed from ``telemetry_15m`` history, or — when history cannot give it — meter-before from raw
telemetry (the per-resource references), with the reason.

Similar days leave out weekends, holidays (``Calendar``) and past event days: any local day on which a
demand-response event ran (was activated), whatever its scope, since a curtailed or raised day says
nothing about normal load.

``backtest_history`` puts the program baselines to the test on the same history: each of the last
non-event working days is treated as if it had had an event, and the baseline is compared with what
the devices really drew (``baselines.backtest``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

import numpy as np
import psycopg

from core.dr.baselines import (
    CHINA,
    PROGRAM_BASELINES,
    SLOTS_PER_DAY,
    BacktestReport,
    Calendar,
    EventWindow,
    FloatArray,
    InsufficientHistory,
    backtest,
    baseline_spec,
    compute_baseline,
    load_profiles,
)

__all__ = [
    "METER_BEFORE",
    "HistoryBacktest",
    "ProgramBaseline",
    "backtest_history",
    "past_event_days",
    "program_baseline",
]

log = logging.getLogger(__name__)

METER_BEFORE = "meter_before"  # what dr_event_runtime.baseline_used says when references are used
WEEKDAYS = Calendar()  # no holiday table yet: Monday to Friday


@dataclass(frozen=True, slots=True)
class ProgramBaseline:
    values_kw: FloatArray | None  # the loads' baseline per event interval; None: the references' sum
    used: str  # the program's baseline name, or METER_BEFORE
    note: str | None  # why the program's method was not used


async def past_event_days(
    conn: psycopg.AsyncConnection[Any], first: date, last: date, tz: tzinfo = CHINA
) -> set[date]:
    """Local days from ``first`` to ``last`` on which an event ran (it has a runtime row)."""
    start = datetime.combine(first, datetime.min.time(), tz)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tz)
    cur = await conn.execute(
        "SELECT e.starts_at, e.ends_at FROM dr_events e JOIN dr_event_runtime r ON r.event_id = e.id"
        " WHERE e.starts_at < %s AND e.ends_at > %s",
        (end, start),
    )
    days: set[date] = set()
    for starts_at, ends_at in await cur.fetchall():
        day = starts_at.astimezone(tz).date()
        while day <= (ends_at - timedelta(microseconds=1)).astimezone(tz).date():
            days.add(day)
            day += timedelta(days=1)
    return days


async def program_baseline(
    conn: psycopg.AsyncConnection[Any],
    name: str,
    starts_at: datetime,
    ends_at: datetime,
    load_ids: Sequence[int],
    calendar: Calendar = WEEKDAYS,
) -> ProgramBaseline:
    """The loads' baseline over the event by the program's method, or meter-before saying why."""
    program = baseline_spec(name)
    if program.method == "meter_before":
        return ProgramBaseline(None, name, None)
    try:
        window = EventWindow.from_times(starts_at, ends_at)
        if not load_ids:
            raise InsufficientHistory("no flexible loads in scope")
        first = window.day - timedelta(days=program.lookback_days + 1)
        profiles = await load_profiles(conn, load_ids, first, window.day)
        excluded = await past_event_days(conn, first, window.day - timedelta(days=1))
        values = compute_baseline(program, profiles, window, calendar, excluded)
        if not np.isfinite(values).all():
            raise InsufficientHistory("the baseline has gaps in the event window")
        return ProgramBaseline(values, name, None)
    except (InsufficientHistory, ValueError) as err:
        note = f"{name} not computable ({err}); using meter_before from raw telemetry"
        log.warning("baseline fallback", extra={"baseline": name, "reason": str(err)})
        return ProgramBaseline(None, METER_BEFORE, note)


@dataclass(frozen=True, slots=True)
class HistoryBacktest:
    days: tuple[date, ...]  # the non-event working days tested, oldest first
    reports: dict[str, BacktestReport]  # program baseline name -> its errors


SEARCH_DAYS = 180  # how far back non-event working days are sought


async def backtest_history(
    conn: psycopg.AsyncConnection[Any],
    device_ids: Sequence[int],
    names: Sequence[str],
    days: int,
    until: date,
    start_slot: int,
    end_slot: int,
    calendar: Calendar = WEEKDAYS,
) -> HistoryBacktest:
    """Back-test program baselines on the summed load of ``device_ids`` over the ``days`` most recent
    working days before ``until`` on which no event ran, for the window ``start_slot``..``end_slot``."""
    if not 0 <= start_slot < end_slot <= SLOTS_PER_DAY:
        raise ValueError(f"the window must lie within one day's {SLOTS_PER_DAY} intervals")
    specs = {name: baseline_spec(name) for name in names or PROGRAM_BASELINES}
    search_from = until - timedelta(days=SEARCH_DAYS)
    event_days = await past_event_days(conn, search_from, until - timedelta(days=1))
    tested: list[date] = []
    day = until - timedelta(days=1)
    while len(tested) < days and day >= search_from:
        if calendar.is_working_day(day) and day not in event_days:
            tested.append(day)
        day -= timedelta(days=1)
    tested.reverse()
    if not tested:
        return HistoryBacktest(
            (), {name: backtest(spec, {}, (), start_slot, end_slot) for name, spec in specs.items()}
        )
    lookback = max(spec.lookback_days for spec in specs.values()) + 1
    profiles = await load_profiles(conn, device_ids, tested[0] - timedelta(days=lookback), tested[-1])
    reports = {
        name: backtest(spec, profiles, tested, start_slot, end_slot, calendar, event_days)
        for name, spec in specs.items()
    }
    return HistoryBacktest(tuple(tested), reports)
