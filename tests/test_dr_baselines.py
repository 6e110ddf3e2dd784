"""Baselines on synthetic day profiles with known answers, the back-test, and the telemetry_15m loader."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest

from core.dr.baselines import (
    CHINA,
    SLOTS_PER_DAY,
    Adjustment,
    BaselineSpec,
    Calendar,
    EventWindow,
    InsufficientHistory,
    backtest,
    baseline_spec,
    compute_baseline,
    high_x_of_y,
    last_n_working_days,
    load_profiles,
    meter_before,
    similar_days,
)

EVENT_DAY = date(2025, 7, 16)  # a Wednesday
WINDOW = EventWindow(EVENT_DAY, 68, 72)  # 17:00-18:00 local


def flat(level: float) -> np.ndarray:
    return np.full(SLOTS_PER_DAY, float(level))


def history(levels: dict[date, float]) -> dict[date, np.ndarray]:
    return {day: flat(level) for day, level in levels.items()}


def working_days_before(day: date, count: int) -> list[date]:
    found: list[date] = []
    while len(found) < count:
        day -= timedelta(days=1)
        if day.weekday() < 5:
            found.append(day)
    return found


def test_high_5_of_10_averages_the_highest_days_and_skips_weekends_holidays_and_events() -> None:
    days = working_days_before(EVENT_DAY, 14)
    levels = {d: 100.0 + 10 * ((i * 7) % 10) for i, d in enumerate(days)}  # a shuffle of 100..190
    profiles = history(levels)
    for weekend in (date(2025, 7, 12), date(2025, 7, 13)):
        profiles[weekend] = flat(9999)
    excluded_event, holiday = days[1], days[2]
    profiles[excluded_event] = profiles[holiday] = flat(5000)
    calendar = Calendar(holidays=frozenset({holiday}))

    usable = [d for d in days if d not in (excluded_event, holiday)][:10]
    assert similar_days(profiles, WINDOW, 10, calendar, {excluded_event}) == usable
    expected = float(np.mean(sorted((levels[d] for d in usable), reverse=True)[:5]))
    got = high_x_of_y(profiles, WINDOW, 5, 10, calendar, {excluded_event})
    assert got == pytest.approx(flat(expected))
    last5 = last_n_working_days(profiles, WINDOW, 5, calendar, {excluded_event})
    assert last5 == pytest.approx(flat(float(np.mean([levels[d] for d in usable[:5]]))))


def test_ranking_is_by_the_event_window_not_the_whole_day() -> None:
    days = working_days_before(EVENT_DAY, 10)
    profiles = {}
    for i, d in enumerate(days):
        profile = flat(1000.0 if i < 5 else 0.0)  # the first five are high all day...
        profile[WINDOW.slots] = 10.0 if i < 5 else 20.0  # ...but low in the window
        profiles[d] = profile
    assert high_x_of_y(profiles, WINDOW)[WINDOW.slots] == pytest.approx(20.0)


def test_make_up_workday_counts_and_incomplete_days_are_skipped() -> None:
    saturday = date(2025, 7, 12)
    days = working_days_before(EVENT_DAY, 5)
    profiles = history({d: 100.0 for d in days} | {saturday: 400.0})
    broken = profiles[days[0]].copy()
    broken[WINDOW.start_slot] = np.nan
    profiles[days[0]] = broken
    calendar = Calendar(make_up_workdays=frozenset({saturday}))
    assert saturday in similar_days(profiles, WINDOW, 5, calendar)
    assert days[0] not in similar_days(profiles, WINDOW, 5, calendar)
    with pytest.raises(InsufficientHistory):
        last_n_working_days(profiles, WINDOW, 5)  # without the make-up day only four are left


def test_meter_before_uses_the_intervals_before_the_event_even_across_midnight() -> None:
    today = np.arange(SLOTS_PER_DAY, dtype=float)
    profiles = {EVENT_DAY: today, EVENT_DAY - timedelta(days=1): flat(42)}
    assert meter_before(profiles, WINDOW) == pytest.approx([67.0] * 4)
    assert meter_before(profiles, WINDOW, before_min=30) == pytest.approx([66.5] * 4)
    assert meter_before(profiles, EventWindow(EVENT_DAY, 0, 2)) == pytest.approx([42.0, 42.0])
    with pytest.raises(InsufficientHistory):
        meter_before({EVENT_DAY: today}, EventWindow(EVENT_DAY, 0, 2))


def adjusted_case(event_day_level: float) -> tuple[dict[date, np.ndarray], np.ndarray]:
    days = working_days_before(EVENT_DAY, 10)
    profiles = history({d: 100.0 for d in days})
    event_day = flat(event_day_level)
    event_day[WINDOW.slots] = 0.0  # the curtailment itself must not move the baseline
    profiles[EVENT_DAY] = event_day
    return profiles, event_day


@pytest.mark.parametrize(
    ("level", "multiplicative", "additive"), [(110, 110, 110), (150, 120, 120), (90, 90, 90)]
)
def test_same_day_adjustment_is_capped(level: float, multiplicative: float, additive: float) -> None:
    profiles, _ = adjusted_case(level)
    for kind, expected in ((Adjustment.MULTIPLICATIVE, multiplicative), (Adjustment.ADDITIVE, additive)):
        spec = BaselineSpec("high_x_of_y", adjustment=kind, cap=0.2)
        assert compute_baseline(spec, profiles, WINDOW) == pytest.approx([expected] * 4)


def test_adjustment_uses_hours_before_the_gap_only() -> None:
    profiles, event_day = adjusted_case(100)
    event_day[WINDOW.start_slot - 4 : WINDOW.start_slot] = 500  # the hour before: the gap, ignored
    spec = BaselineSpec("high_x_of_y", adjustment=Adjustment.MULTIPLICATIVE)
    assert compute_baseline(spec, profiles, WINDOW) == pytest.approx([100.0] * 4)


def test_specs_are_selectable_by_name_and_validated() -> None:
    assert baseline_spec("high_5_of_10_adjusted").adjustment is Adjustment.MULTIPLICATIVE
    with pytest.raises(KeyError, match="known"):
        baseline_spec("nope")
    with pytest.raises(ValueError):
        BaselineSpec("meter_before", adjustment=Adjustment.ADDITIVE)
    with pytest.raises(ValueError):
        BaselineSpec("high_x_of_y", x=11, y=10)


def test_event_window_from_times() -> None:
    start = datetime(2025, 7, 16, 9, 0, tzinfo=UTC)  # 17:00 in Hunan
    assert EventWindow.from_times(start, start + timedelta(hours=1)) == WINDOW
    with pytest.raises(ValueError):
        EventWindow.from_times(start, start + timedelta(minutes=20))


def test_backtest_reports_known_errors() -> None:
    days = working_days_before(EVENT_DAY + timedelta(days=1), 30)
    rng = np.random.default_rng(1)
    shape = 100 + 50 * np.sin(np.linspace(0, 2 * np.pi, SLOTS_PER_DAY))
    profiles = {d: shape.copy() for d in days}
    tested = days[:5]
    perfect = backtest(baseline_spec("last_5_working_days"), profiles, tested, 68, 72)
    assert perfect.mape_pct == pytest.approx(0) and perfect.cv_rmse_pct == pytest.approx(0)
    assert len(perfect.days) == 5 and not perfect.skipped

    # Each tested day 10% above the usual shape: the baseline misses by 1/11 of the actual.
    for d in tested:
        profiles[d] = shape * 1.1
    report = backtest(
        baseline_spec("last_5_working_days"), profiles, tested, 68, 72, excluded_days=set(tested)
    )
    assert report.mape_pct == pytest.approx(100 / 11)
    a = np.concatenate([profiles[d][68:72] for d in tested])
    assert report.cv_rmse_pct == pytest.approx(np.sqrt(np.mean((a / 11) ** 2)) / a.mean() * 100)

    noisy = {d: shape + rng.normal(0, 1, SLOTS_PER_DAY) for d in days}
    assert backtest(baseline_spec("high_5_of_10"), noisy, tested, 68, 72).mape_pct < 5

    too_early = backtest(baseline_spec("high_5_of_10"), profiles, [days[-1]], 68, 72)
    assert math.isnan(too_early.mape_pct) and days[-1] in too_early.skipped


async def test_load_profiles_sums_device_averages_from_the_15_minute_rollup(
    conn: psycopg.AsyncConnection,
) -> None:
    devices = [990_001, 990_002]  # rollup rows need no registered device; ids no other test uses
    day = date(2025, 7, 1)
    t0 = datetime(2025, 7, 1, 17, 0, tzinfo=CHINA)
    rows = [
        (t0, devices[0], 4, 4_000_000.0),  # 4 readings averaging 1000 kW
        (t0, devices[1], 2, 1_000_000.0),  # 2 readings averaging 500 kW
        (t0 + timedelta(minutes=15), devices[0], 1, 700_000.0),  # the other device missing: NaN
    ]
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO telemetry_15m (bucket, device_id, metric_id, n, sum, min, max, last, last_ts)"
            " VALUES (%s, %s, 1, %s, %s, 0, 0, 0, %s)",
            [(ts, dev, n, total, ts) for ts, dev, n, total in rows],
        )
    profiles = await load_profiles(conn, devices, day, day + timedelta(days=1))
    assert set(profiles) == {day, day + timedelta(days=1)}
    assert profiles[day][68] == pytest.approx(1500.0)
    assert np.isnan(profiles[day][69]) and np.isnan(profiles[day][:68]).all()
    assert (await load_profiles(conn, devices[:1], day, day))[day][69] == pytest.approx(700.0)
