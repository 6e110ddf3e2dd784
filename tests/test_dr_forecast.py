"""Forecast logic on synthetic data with known answers: similar-day load forecasts (exact on periodic
history, weighted toward recent days, level adjustment within its cap), PV from clear sky and cloud
(zero at night, never above rating, less with more cloud), calibration, and the error measures."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.dr.baselines import SLOTS_PER_DAY, Calendar, InsufficientHistory
from core.dr.forecast import (
    LoadForecastSpec,
    PvArray,
    PvCalibration,
    calibrate_pv,
    clear_sky_index,
    clear_sky_poa,
    cloud_slots,
    forecast_load,
    forecast_pv,
    load_error,
    mape_pct,
    peak_window,
    pv_basis,
    pv_error,
    usable_day,
)

TARGET = date(2025, 7, 16)  # a Wednesday
LIXIAN = (29.63, 111.75)

profiles_96 = arrays(np.float64, SLOTS_PER_DAY, elements=st.floats(1.0, 1e5, allow_nan=False))


def flat(level: float) -> np.ndarray:
    return np.full(SLOTS_PER_DAY, float(level))


def by_calendar(
    target: date, days: int, calendar: Calendar, working: np.ndarray, other: np.ndarray
) -> dict[date, np.ndarray]:
    history = {}
    for back in range(1, days + 1):
        d = target - timedelta(days=back)
        history[d] = (working if calendar.is_working_day(d) else other).copy()
    return history


@settings(max_examples=60, deadline=None)
@given(
    working=profiles_96,
    other=profiles_96,
    target=st.dates(date(2020, 1, 1), date(2030, 12, 31)),
    holiday_offsets=st.sets(st.integers(0, 41), max_size=6),
    make_up_offsets=st.sets(st.integers(0, 41), max_size=3),
)
def test_periodic_history_is_forecast_exactly(
    working: np.ndarray,
    other: np.ndarray,
    target: date,
    holiday_offsets: set[int],
    make_up_offsets: set[int],
) -> None:
    """Every working day alike and every other day alike: the forecast is the target's day type."""
    calendar = Calendar(
        frozenset(target - timedelta(days=o) for o in holiday_offsets),
        frozenset(target - timedelta(days=o) for o in make_up_offsets),
    )
    history = by_calendar(target, 42, calendar, working, other)
    fc = forecast_load(history, target, calendar)
    expected = working if calendar.is_working_day(target) else other
    assert fc.kw == pytest.approx(expected, rel=1e-9)
    assert fc.level == pytest.approx(1.0)
    assert all(calendar.is_working_day(d) == calendar.is_working_day(target) for d in fc.days_used)


def test_recent_days_weigh_more_and_the_target_day_is_never_used() -> None:
    spec = LoadForecastSpec(days=3, decay=0.5, level_gain=0.0)
    history = {TARGET: flat(10_000)}  # the target day itself: must not leak in
    for back, level in ((1, 300.0), (2, 200.0), (3, 100.0), (6, 50.0)):  # Tue, Mon, Sun(skip), Thu
        history[TARGET - timedelta(days=back)] = flat(level)
    history[TARGET - timedelta(days=3)] = flat(9_999)  # a Sunday: another day type
    fc = forecast_load(history, TARGET, spec=spec)
    assert fc.days_used == (
        TARGET - timedelta(days=1),
        TARGET - timedelta(days=2),
        TARGET - timedelta(days=6),
    )
    assert fc.weights == pytest.approx((4 / 7, 2 / 7, 1 / 7))
    assert fc.kw == pytest.approx(flat((4 * 300 + 2 * 200 + 50) / 7))


def test_level_adjustment_follows_the_latest_day_within_its_cap() -> None:
    history = {TARGET - timedelta(days=back): flat(100) for back in range(2, 30)}
    history[TARGET - timedelta(days=1)] = flat(110)  # the latest day came in 10 % above its forecast
    one_day = {"days": 1, "min_days": 1, "decay": 1.0}
    full = forecast_load(history, TARGET, spec=LoadForecastSpec(level_gain=1.0, level_cap=0.5, **one_day))
    assert full.level == pytest.approx(1.1) and full.kw == pytest.approx(flat(121))
    capped = forecast_load(history, TARGET, spec=LoadForecastSpec(level_gain=1.0, level_cap=0.05, **one_day))
    assert capped.level == pytest.approx(1.05) and capped.kw == pytest.approx(flat(110 * 1.05))
    half = forecast_load(history, TARGET, spec=LoadForecastSpec(level_gain=0.5, level_cap=0.5, **one_day))
    assert half.level == pytest.approx(1.05)


def test_gaps_are_filled_up_to_a_limit_and_too_little_history_is_an_error() -> None:
    ramp = np.arange(SLOTS_PER_DAY, dtype=np.float64) + 1
    gappy = ramp.copy()
    gappy[[0, 40, 41, 95]] = np.nan
    filled = usable_day(gappy, 4)  # inside: linear; at the ends: held flat
    assert (
        filled is not None
        and filled[40:42] == pytest.approx([41, 42])
        and filled[0] == 2
        and filled[95] == 95
    )
    assert usable_day(gappy, 3) is None and usable_day(None, 4) is None

    spec = LoadForecastSpec(days=3, min_days=2)
    history = {TARGET - timedelta(days=1): flat(100), TARGET - timedelta(days=2): gappy.copy()}
    with pytest.raises(InsufficientHistory):
        forecast_load(history, TARGET, spec=LoadForecastSpec(days=3, min_days=2, max_missing=0))
    assert forecast_load(history, TARGET, spec=spec).days_used == tuple(sorted(history, reverse=True))
    with pytest.raises(InsufficientHistory):
        forecast_load({}, TARGET)
    with pytest.raises(ValueError):
        LoadForecastSpec(days=2, min_days=3)


def test_peak_window() -> None:
    kw = flat(100)
    kw[70:74] = [150, 300, 300, 150]
    assert peak_window(kw, 2) == 71
    assert peak_window(kw, 4) == 70
    with pytest.raises(ValueError):
        peak_window(kw, 0)


# --- PV ---


def test_clear_sky_is_plausible_for_lixian_in_summer_and_winter() -> None:
    july = clear_sky_poa(date(2025, 7, 16), *LIXIAN, 20, 180)
    december = clear_sky_poa(date(2025, 12, 21), *LIXIAN, 20, 180)
    assert 850 < july.max() < 1100 and 500 < december.max() < 900
    # Solar noon at 111.75 E is about 12:30 local (UTC+8 is the 120 E meridian).
    assert 12 * 4 - 2 <= int(np.argmax(july)) <= 12 * 4 + 3
    light = np.flatnonzero(july > 0)
    assert 5 * 4 <= light[0] <= 6 * 4 and 19 * 4 <= light[-1] <= 20 * 4  # sunrise 05:xx, sunset 19:xx
    assert (december > 0).sum() < (july > 0).sum()


@settings(max_examples=40, deadline=None)
@given(
    day=st.dates(date(2024, 1, 1), date(2026, 12, 31)),
    tilt=st.floats(0, 60),
    azimuth=st.floats(90, 270),
    rated=st.floats(1, 5_000),
    performance=st.floats(0.1, 1.5),
    cloud=st.lists(st.floats(0, 1), min_size=24, max_size=24),
    more=st.lists(st.floats(0, 1), min_size=24, max_size=24),
)
def test_pv_is_zero_at_night_never_above_rating_and_less_under_more_cloud(
    day: date,
    tilt: float,
    azimuth: float,
    rated: float,
    performance: float,
    cloud: list[float],
    more: list[float],
) -> None:
    basis = pv_basis([day], [PvArray(rated, tilt, azimuth)], *LIXIAN)[day]
    calibration = PvCalibration(performance, 1.0, 10)
    kw = forecast_pv(basis, rated, calibration, cloud_slots(cloud))
    assert (kw >= 0).all() and (kw <= rated + 1e-9).all()
    assert (kw[basis == 0] == 0).all()
    assert (kw[: 5 * 4] == 0).all() and (kw[21 * 4 :] == 0).all()  # 00:00-05:00 and 21:00-24:00
    cloudier = cloud_slots(np.maximum(cloud, more))
    assert (forecast_pv(basis, rated, calibration, cloudier) <= kw + 1e-9).all()
    assert (forecast_pv(basis, rated, calibration, cloud_slots([0.0] * 24)) >= kw - 1e-9).all()


def test_cloud_input_and_kasten_czeplak() -> None:
    assert clear_sky_index(np.array([0.0, 1.0])) == pytest.approx([1.0, 0.25])
    assert clear_sky_index(np.array([0.5])) == pytest.approx([1 - 0.75 * 0.5**3.4])
    hourly = cloud_slots([h / 23 for h in range(24)])
    assert len(hourly) == 96 and hourly[4:8] == pytest.approx([1 / 23] * 4)
    assert cloud_slots([0.5] * 96) == pytest.approx([0.5] * 96)
    for bad in ([0.5] * 23, [0.5] * 25, [1.2] * 24, [-0.1] * 24, [math.nan] * 24):
        with pytest.raises(ValueError):
            cloud_slots(bad)


def test_calibration_takes_clear_days_for_performance_and_the_mean_for_the_typical_index() -> None:
    days = [date(2025, 6, 1) + timedelta(days=i) for i in range(10)]
    basis = pv_basis(days, [PvArray(500, 20, 180)], *LIXIAN)
    observed = {d: basis[d] * (0.8 if i < 7 else 0.4) for i, d in enumerate(days)}
    observed[days[0]] = observed[days[0]].copy()
    observed[days[0]][60] = np.nan  # a gap in daylight: the day is not used
    cal = calibrate_pv(observed, basis)
    assert cal.days == 9
    assert cal.performance == pytest.approx(0.8)
    assert cal.typical_index == pytest.approx((6 * 0.8 + 3 * 0.4) / 9 / 0.8)
    assert calibrate_pv({}, basis) == PvCalibration()  # no history: the defaults
    # Without a cloud input the typical index applies; a cloud input replaces it.
    day = days[-1]
    assert forecast_pv(basis[day], 500, cal) == pytest.approx(
        np.clip(basis[day] * 0.8 * cal.typical_index, 0, 500)
    )
    assert forecast_pv(basis[day], 500, cal, cloud_slots([0.0] * 24)) == pytest.approx(basis[day] * 0.8)


# --- error measures ---


@settings(max_examples=200)
@given(
    actual=arrays(np.float64, 96, elements=st.floats(0.1, 1e6)),
    k=st.floats(-0.99, 3),
    scale=st.floats(1e-3, 1e3),
)
def test_mape_properties(actual: np.ndarray, k: float, scale: float) -> None:
    assert mape_pct(actual, actual) == 0
    off = mape_pct(actual, actual * (1 + k))
    assert off is not None and off == pytest.approx(abs(k) * 100, rel=1e-6, abs=1e-9)
    forecast = actual[::-1].copy()
    base = mape_pct(actual, forecast)
    assert base is not None and base >= 0
    assert mape_pct(actual * scale, forecast * scale) == pytest.approx(base, rel=1e-6)
    # Intervals with no actual value (NaN) or a zero actual are left out.
    gappy = actual.copy()
    gappy[:10] = np.nan
    gappy[10:20] = 0
    assert mape_pct(gappy, forecast) == pytest.approx(mape_pct(actual[20:], forecast[20:]))


def test_mape_of_nothing_and_load_error() -> None:
    assert mape_pct(np.zeros(96), np.ones(96)) is None
    actual = flat(100)
    actual[:48] = 50
    err = load_error(actual, flat(75))
    assert err.mape_pct == pytest.approx((25 / 50 + 25 / 100) / 2 * 100)
    assert err.nmae_pct == pytest.approx(25 / 75 * 100) and err.bias_pct == pytest.approx(0)
    assert err.slots == 96
    assert load_error(np.full(96, np.nan), flat(1)).slots == 0


def test_pv_error_is_over_daylight_and_normalized_by_rating() -> None:
    actual = np.zeros(96)
    actual[24:76] = 200.0
    forecast = np.zeros(96)
    forecast[24:76] = 250.0
    forecast[10] = 5.0  # a night-time slot: outside daylight, not counted
    daylight = np.zeros(96)
    daylight[24:76] = 1
    err = pv_error(actual, forecast, 1000.0, daylight)
    assert err.mape_pct is None and err.slots == 52
    assert err.nmae_pct == pytest.approx(5.0) and err.bias_pct == pytest.approx(5.0)
