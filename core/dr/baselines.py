"""Customer baselines: what a resource or an aggregate would have drawn had there been no event.

Pure functions over 15-minute interval data held as *day profiles*: one array of 96 kW values per local
calendar day (Asia/Shanghai has no daylight saving, so every day has 96 intervals); NaN marks a
missing interval. ``load_profiles`` fills them from ``telemetry_15m``.

Methods (selectable per program by name, see ``PROGRAM_BASELINES``):

- ``high_x_of_y``: of the last ``y`` similar days (working days, not holidays, not event days, with
  complete data over the window), the ``x`` with the highest average load over the event window,
  averaged interval by interval;
- ``last_n_working_days``: the average of the last ``n`` similar days;
- ``meter_before``: the average of the intervals just before the event, held flat over the window.

Same-day adjustment (the first two only) compares the event day with the baseline over a few hours
ending a gap before the event (the gap keeps pre-event behaviour from gaming the baseline), and
shifts (additive) or scales (multiplicative) the window's baseline, capped at ±``cap`` of the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from numpy.typing import NDArray

from core.metrics import metric

__all__ = [
    "CHINA",
    "PROGRAM_BASELINES",
    "SLOTS_PER_DAY",
    "Adjustment",
    "BacktestReport",
    "BaselineSpec",
    "Calendar",
    "EventWindow",
    "InsufficientHistory",
    "backtest",
    "baseline_spec",
    "compute_baseline",
    "high_x_of_y",
    "last_n_working_days",
    "load_profiles",
    "meter_before",
    "profiles_from_samples",
    "similar_days",
]

FloatArray = NDArray[np.float64]
DayProfiles = Mapping[date, FloatArray]

CHINA = ZoneInfo("Asia/Shanghai")
SLOT_MIN = 15
SLOTS_PER_DAY = 24 * 60 // SLOT_MIN


class InsufficientHistory(ValueError):
    """Too few usable days (or intervals) for the method."""


@dataclass(frozen=True, slots=True)
class Calendar:
    """Working days: Monday–Friday, minus public holidays, plus the weekend make-up days (调休)."""

    holidays: frozenset[date] = frozenset()
    make_up_workdays: frozenset[date] = frozenset()

    def is_working_day(self, day: date) -> bool:
        if day in self.make_up_workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays


@dataclass(frozen=True, slots=True)
class EventWindow:
    """An event's intervals on one local day: slots ``start_slot`` (inclusive) to ``end_slot`` (exclusive)."""

    day: date
    start_slot: int
    end_slot: int

    def __post_init__(self) -> None:
        if not 0 <= self.start_slot < self.end_slot <= SLOTS_PER_DAY:
            raise ValueError(f"window slots must satisfy 0 <= start < end <= {SLOTS_PER_DAY}")

    @classmethod
    def from_times(cls, start: datetime, end: datetime, tz: tzinfo = CHINA) -> EventWindow:
        """From aware datetimes on 15-minute boundaries, within one local day."""
        local_start, local_end = start.astimezone(tz), end.astimezone(tz)
        start_slot = (local_start.hour * 60 + local_start.minute) // SLOT_MIN
        span = (local_end - local_start).total_seconds() / 60
        if span <= 0 or span % SLOT_MIN or local_start.minute % SLOT_MIN or local_start.second:
            raise ValueError("an event window is whole 15-minute intervals")
        return cls(local_start.date(), start_slot, start_slot + int(span) // SLOT_MIN)

    @property
    def slots(self) -> slice:
        return slice(self.start_slot, self.end_slot)


class Adjustment(StrEnum):
    NONE = "none"
    ADDITIVE = "additive"
    MULTIPLICATIVE = "multiplicative"


MethodName = Literal["high_x_of_y", "last_n_working_days", "meter_before"]


@dataclass(frozen=True, slots=True)
class BaselineSpec:
    method: MethodName
    x: int = 5  # high x of y: how many of the highest days are averaged
    y: int = 10  # high x of y: how many similar days are considered; last n working days: n
    before_min: int = 15  # meter before: how much of the time before the event
    adjustment: Adjustment = Adjustment.NONE
    cap: float = 0.2  # adjustment limited to ±20% of the baseline
    adjust_hours: float = 2.0
    adjust_gap_hours: float = 1.0
    lookback_days: int = 45  # how far back similar days are sought

    def __post_init__(self) -> None:
        if self.method == "meter_before" and self.adjustment is not Adjustment.NONE:
            raise ValueError("meter_before already is the same-day measure: it takes no adjustment")
        if not (1 <= self.x <= self.y) or self.cap < 0 or self.before_min % SLOT_MIN or self.before_min <= 0:
            raise ValueError("need 1 <= x <= y, cap >= 0 and before_min a positive multiple of 15")


PROGRAM_BASELINES: dict[str, BaselineSpec] = {
    "high_5_of_10": BaselineSpec("high_x_of_y", x=5, y=10),
    "high_5_of_10_adjusted": BaselineSpec("high_x_of_y", x=5, y=10, adjustment=Adjustment.MULTIPLICATIVE),
    "last_5_working_days": BaselineSpec("last_n_working_days", y=5),
    "last_5_working_days_adjusted": BaselineSpec("last_n_working_days", y=5, adjustment=Adjustment.ADDITIVE),
    "meter_before_15min": BaselineSpec("meter_before", before_min=15),
}


def baseline_spec(name: str) -> BaselineSpec:
    try:
        return PROGRAM_BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(sorted(PROGRAM_BASELINES))}") from None


def similar_days(
    profiles: DayProfiles,
    window: EventWindow,
    count: int,
    calendar: Calendar = Calendar(),
    excluded_days: Collection[date] = (),
    lookback_days: int = 45,
) -> list[date]:
    """Up to ``count`` working days before the event's day, most recent first, with the window complete."""
    found: list[date] = []
    for back in range(1, lookback_days + 1):
        day = window.day - timedelta(days=back)
        if not calendar.is_working_day(day) or day in excluded_days:
            continue
        profile = profiles.get(day)
        if profile is None or np.isnan(profile[window.slots]).any():
            continue
        found.append(day)
        if len(found) == count:
            break
    return found


def high_x_of_y(
    profiles: DayProfiles,
    window: EventWindow,
    x: int = 5,
    y: int = 10,
    calendar: Calendar = Calendar(),
    excluded_days: Collection[date] = (),
    lookback_days: int = 45,
) -> FloatArray:
    """The day profile (96 values) averaged over the x highest of the last y similar days."""
    days = similar_days(profiles, window, y, calendar, excluded_days, lookback_days)
    if len(days) < x:
        raise InsufficientHistory(f"high {x} of {y}: only {len(days)} similar days with data")
    window_means = np.array([profiles[d][window.slots].mean() for d in days])
    # Stable sort on the most-recent-first list: of equally high days, the more recent wins.
    highest = np.argsort(-window_means, kind="stable")[:x]
    return np.mean([profiles[days[i]] for i in highest], axis=0)


def last_n_working_days(
    profiles: DayProfiles,
    window: EventWindow,
    n: int = 5,
    calendar: Calendar = Calendar(),
    excluded_days: Collection[date] = (),
    lookback_days: int = 45,
) -> FloatArray:
    days = similar_days(profiles, window, n, calendar, excluded_days, lookback_days)
    if len(days) < n:
        raise InsufficientHistory(f"last {n} working days: only {len(days)} with data")
    return np.mean([profiles[d] for d in days], axis=0)


def _day_and_previous(profiles: DayProfiles, day: date) -> FloatArray:
    """Two days back to back (the previous day, then ``day``), NaN where missing."""
    empty = np.full(SLOTS_PER_DAY, np.nan)
    return np.concatenate([profiles.get(day - timedelta(days=1), empty), profiles.get(day, empty)])


def meter_before(profiles: DayProfiles, window: EventWindow, before_min: int = 15) -> FloatArray:
    """The average of the intervals just before the event, flat over the window."""
    both = _day_and_previous(profiles, window.day)
    start = SLOTS_PER_DAY + window.start_slot
    before = both[start - before_min // SLOT_MIN : start]
    if np.isnan(before).any():
        raise InsufficientHistory(f"meter before: the {before_min} min before the event are incomplete")
    return np.full(window.end_slot - window.start_slot, float(before.mean()))


def _adjust(
    baseline_day: FloatArray, actual_day: FloatArray | None, window: EventWindow, spec: BaselineSpec
) -> FloatArray:
    raw = baseline_day[window.slots]
    if spec.adjustment is Adjustment.NONE:
        return raw
    end = window.start_slot - round(spec.adjust_gap_hours * 60 / SLOT_MIN)
    start = max(0, end - round(spec.adjust_hours * 60 / SLOT_MIN))
    if actual_day is None or end <= start or np.isnan(actual_day[start:end]).any():
        raise InsufficientHistory("same-day adjustment: the event day's adjustment hours are missing")
    actual, expected = float(actual_day[start:end].mean()), float(baseline_day[start:end].mean())
    if spec.adjustment is Adjustment.MULTIPLICATIVE:
        ratio = actual / expected if expected > 0 else 1.0
        return raw * min(1 + spec.cap, max(1 - spec.cap, ratio))
    shift_cap = spec.cap * abs(expected)
    return raw + min(shift_cap, max(-shift_cap, actual - expected))


def compute_baseline(
    spec: BaselineSpec,
    profiles: DayProfiles,
    window: EventWindow,
    calendar: Calendar = Calendar(),
    excluded_days: Collection[date] = (),
) -> FloatArray:
    """The baseline over the event window (one kW value per interval)."""
    if spec.method == "meter_before":
        return meter_before(profiles, window, spec.before_min)
    if spec.method == "high_x_of_y":
        day = high_x_of_y(profiles, window, spec.x, spec.y, calendar, excluded_days, spec.lookback_days)
    else:
        day = last_n_working_days(profiles, window, spec.y, calendar, excluded_days, spec.lookback_days)
    return _adjust(day, profiles.get(window.day), window, spec)


@dataclass(frozen=True, slots=True)
class BacktestReport:
    spec: BaselineSpec
    days: tuple[date, ...]
    mape_pct: float  # over all intervals of all days tested (intervals with zero load left out)
    cv_rmse_pct: float  # RMSE over the mean actual load
    per_day_mape_pct: dict[date, float] = field(default_factory=dict)
    skipped: dict[date, str] = field(default_factory=dict)


def backtest(
    spec: BaselineSpec,
    profiles: DayProfiles,
    days: Iterable[date],
    start_slot: int,
    end_slot: int,
    calendar: Calendar = Calendar(),
    excluded_days: Collection[date] = (),
) -> BacktestReport:
    """Pretend each of ``days`` (non-event days) had an event in the slots; compare baseline and actual."""
    actual_all: list[FloatArray] = []
    baseline_all: list[FloatArray] = []
    per_day: dict[date, float] = {}
    skipped: dict[date, str] = {}
    for day in sorted(days):
        window = EventWindow(day, start_slot, end_slot)
        actual = profiles.get(day)
        if actual is None or np.isnan(actual[window.slots]).any():
            skipped[day] = "no complete data in the window"
            continue
        try:
            predicted = compute_baseline(spec, profiles, window, calendar, excluded_days)
        except InsufficientHistory as err:
            skipped[day] = str(err)
            continue
        actual_all.append(actual[window.slots])
        baseline_all.append(predicted)
        per_day[day] = _mape(actual[window.slots], predicted)
    if not actual_all:
        return BacktestReport(spec, (), math.nan, math.nan, per_day, skipped)
    a, b = np.concatenate(actual_all), np.concatenate(baseline_all)
    return BacktestReport(spec, tuple(per_day), _mape(a, b), _cv_rmse(a, b), per_day, skipped)


def _mape(actual: FloatArray, predicted: FloatArray) -> float:
    nonzero = actual != 0
    if not nonzero.any():
        return math.nan
    return float(np.mean(np.abs((actual[nonzero] - predicted[nonzero]) / actual[nonzero])) * 100)


def _cv_rmse(actual: FloatArray, predicted: FloatArray) -> float:
    mean = float(actual.mean())
    return float(np.sqrt(np.mean((actual - predicted) ** 2)) / mean * 100) if mean else math.nan


def profiles_from_samples(
    samples: Iterable[tuple[datetime, float]], tz: tzinfo = CHINA
) -> dict[date, FloatArray]:
    """Day profiles from (interval start, kW) pairs; intervals not given stay NaN."""
    profiles: dict[date, FloatArray] = {}
    for ts, value in samples:
        local = ts.astimezone(tz)
        day = profiles.setdefault(local.date(), np.full(SLOTS_PER_DAY, np.nan))
        day[(local.hour * 60 + local.minute) // SLOT_MIN] = value
    return profiles


async def load_profiles(
    conn: psycopg.AsyncConnection[Any],
    device_ids: Sequence[int],
    first_day: date,
    last_day: date,
    tz: tzinfo = CHINA,
    metric_name: str = "active_power_w",
) -> dict[date, FloatArray]:
    """Day profiles of the summed average power (kW) of ``device_ids`` from ``telemetry_15m``.

    An interval counts only if every device has a reading in it: a sum over part of the devices would
    look like a drop in load. Buckets the rollup refresh has not reached yet are not seen here, so ask
    for days that are over.
    """
    if not device_ids:
        raise ValueError("no devices")
    start = datetime.combine(first_day, datetime.min.time(), tz)
    end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tz)
    cur = await conn.execute(
        "SELECT bucket, sum(sum / n) / 1000.0 FROM telemetry_15m"
        " WHERE device_id = ANY(%s) AND metric_id = %s AND bucket >= %s AND bucket < %s AND n > 0"
        " GROUP BY bucket HAVING count(DISTINCT device_id) = %s ORDER BY bucket",
        (list(device_ids), metric(metric_name).id, start, end, len(set(device_ids))),
    )
    rows = await cur.fetchall()
    profiles = profiles_from_samples(((ts, float(kw)) for ts, kw in rows), tz)
    day = first_day
    while day <= last_day:  # every asked-for day is present, missing ones all NaN
        profiles.setdefault(day, np.full(SLOTS_PER_DAY, np.nan))
        day += timedelta(days=1)
    return profiles
