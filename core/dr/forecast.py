"""Day-ahead forecasts: site load from history, PV from clear sky and a cloud input, and their error.

Pure functions over day profiles (96 × 15-minute kW values per local day, NaN where missing: see
``baselines``); ``forecast_store`` reads history from ``telemetry_15m`` and stores what is issued.

**Load** (``similar_days_v1``): the weighted mean of the last ``days`` similar days before the target
day (similar = the same type, working or not, on the Chinese calendar with its holidays and make-up
days, and not a day a demand-response event ran: a curtailed or raised day says nothing about normal
load), each older day weighted ``decay`` times the next newer one; then a level adjustment: the most
recent complete non-event day (at most ``level_reference_days`` back) is forecast the same way from
the days before it, and ``level_gain`` of its relative miss (actual over forecast mean; the factor capped to
1 ± ``level_cap``) scales the target day's profile, so a lasting change of level shows up faster
than the weights alone would let it. A day with at most ``max_missing`` missing intervals counts,
filled by interpolation.

**PV** (``clearsky_kc_v1``): pvlib's Ineichen clear-sky irradiance on each array's plane (Linke
turbidity fixed, no online lookup), averaged per 15-minute interval, times the array's rating, times
a performance factor (DC/AC ratio × derate, calibrated from history as a high quantile of the daily
ratio observed ÷ clear-sky, i.e. from the clear days), times a clear-sky index per hour from the
forecast cloud cover c: Kasten–Czeplak's 1 − 0.75·c^3.4 (a GHI relation, applied to the plane of the
array as an approximation). With no cloud input the recent mean clear-sky index is used (1, clear
sky, without history). Clipped to the site's rating, zero at night.

**Error**: load by MAPE over intervals with non-zero actual load (and nMAE, mean absolute error over
mean actual load, which stays meaningful for sites whose load comes near zero); PV by nMAE over the
daylight intervals normalized by the rated power (MAPE divides by near-zero output at dawn and dusk).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from core.dr.baselines import CHINA, SLOT_MIN, SLOTS_PER_DAY, Calendar, InsufficientHistory

__all__ = [
    "LIXIAN",
    "METHOD_LOAD",
    "METHOD_PV",
    "PLAIN_WEEK",
    "ForecastError",
    "LoadForecast",
    "LoadForecastSpec",
    "PvArray",
    "PvCalibration",
    "calibrate_pv",
    "clear_sky_index",
    "clear_sky_poa",
    "clear_sky_poa_days",
    "cloud_slots",
    "daylight_slots",
    "forecast_load",
    "forecast_pv",
    "load_error",
    "mape_pct",
    "peak_window",
    "pv_basis",
    "pv_error",
    "slot_start",
    "usable_day",
]

FloatArray = NDArray[np.float64]
DayProfiles = Mapping[date, FloatArray]

LIXIAN = (29.63, 111.75)  # the county seat, where a site has no coordinates
LINKE_TURBIDITY = 3.8  # humid, somewhat hazy central-China air (as the simulators use)
ALTITUDE_M = 40.0
METHOD_LOAD = "similar_days_v1"
METHOD_PV = "clearsky_kc_v1"
PLAIN_WEEK = Calendar()  # Monday to Friday, no holidays: pass the year's calendar where it matters


# --- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadForecastSpec:
    days: int = 5  # similar days averaged
    lookback_days: int = 35  # how far back they are sought
    decay: float = 0.8  # weight of a similar day relative to the next newer one
    max_missing: int = 4  # intervals a day may miss (filled by interpolation) and still count
    level_gain: float = 0.5  # share of the latest day's relative miss applied to the level
    level_cap: float = 0.15  # the level factor stays within 1 ± this
    level_reference_days: int = 7  # how far back the level's reference day may lie
    min_days: int = 2  # fewer similar days than this: no forecast

    def __post_init__(self) -> None:
        if not (1 <= self.min_days <= self.days and self.lookback_days >= self.days):
            raise ValueError("need 1 <= min_days <= days <= lookback_days")
        if not (0 < self.decay <= 1 and 0 <= self.level_gain <= 1 and 0 <= self.level_cap < 1):
            raise ValueError("need 0 < decay <= 1, 0 <= level_gain <= 1, 0 <= level_cap < 1")
        if not (0 <= self.max_missing < SLOTS_PER_DAY // 2 and self.level_reference_days >= 0):
            raise ValueError("need max_missing within 0 .. half a day and level_reference_days >= 0")


@dataclass(frozen=True, slots=True)
class LoadForecast:
    day: date
    kw: FloatArray  # 96 values
    days_used: tuple[date, ...]  # most recent first
    weights: tuple[float, ...]
    level: float  # the level factor applied


def usable_day(profile: FloatArray | None, max_missing: int) -> FloatArray | None:
    """The profile with up to ``max_missing`` missing intervals filled linearly; None if it misses more."""
    if profile is None:
        return None
    missing = np.isnan(profile)
    count = int(missing.sum())
    if count == 0:
        return profile
    if count > max_missing:
        return None
    slots = np.arange(SLOTS_PER_DAY)
    filled = profile.copy()
    filled[missing] = np.interp(slots[missing], slots[~missing], profile[~missing])
    return filled


def _similar(
    profiles: DayProfiles,
    day: date,
    calendar: Calendar,
    spec: LoadForecastSpec,
    excluded: Collection[date] = frozenset(),
) -> list[tuple[date, FloatArray]]:
    working = calendar.is_working_day(day)
    found: list[tuple[date, FloatArray]] = []
    for back in range(1, spec.lookback_days + 1):
        d = day - timedelta(days=back)
        if calendar.is_working_day(d) != working or d in excluded:
            continue
        profile = usable_day(profiles.get(d), spec.max_missing)
        if profile is not None:
            found.append((d, profile))
            if len(found) == spec.days:
                break
    return found


def _weighted(similar: Sequence[tuple[date, FloatArray]], decay: float) -> tuple[FloatArray, FloatArray]:
    weights = decay ** np.arange(len(similar), dtype=np.float64)
    weights /= weights.sum()
    stacked = np.stack([p for _, p in similar])
    return np.einsum("i,ij->j", weights, stacked), weights


def _level(
    profiles: DayProfiles,
    day: date,
    calendar: Calendar,
    spec: LoadForecastSpec,
    excluded: Collection[date] = frozenset(),
) -> float:
    """1 + gain × (actual ÷ forecast − 1) of the most recent complete non-event day before ``day``,
    capped."""
    if spec.level_gain == 0:
        return 1.0
    for back in range(1, spec.level_reference_days + 1):
        ref = day - timedelta(days=back)
        actual = None if ref in excluded else usable_day(profiles.get(ref), spec.max_missing)
        if actual is None:
            continue
        similar = _similar(profiles, ref, calendar, spec, excluded)
        if len(similar) < spec.min_days:
            return 1.0
        expected = float(_weighted(similar, spec.decay)[0].mean())
        got = float(actual.mean())
        if expected <= 0 or got <= 0:  # a site exporting on balance: no meaningful ratio
            return 1.0
        factor = 1 + spec.level_gain * (got / expected - 1)
        return min(1 + spec.level_cap, max(1 - spec.level_cap, factor))
    return 1.0


def forecast_load(
    profiles: DayProfiles,
    day: date,
    calendar: Calendar = PLAIN_WEEK,
    spec: LoadForecastSpec = LoadForecastSpec(),
    excluded: Collection[date] = frozenset(),
) -> LoadForecast:
    """The load profile of ``day`` from the days before it (nothing of ``day`` itself is used), leaving
    out the ``excluded`` days (past event days)."""
    similar = _similar(profiles, day, calendar, spec, excluded)
    if len(similar) < spec.min_days:
        kind = "working" if calendar.is_working_day(day) else "non-working"
        raise InsufficientHistory(
            f"{len(similar)} usable {kind} non-event days in the {spec.lookback_days} days before {day}"
            f" (need {spec.min_days})"
        )
    base, weights = _weighted(similar, spec.decay)
    level = _level(profiles, day, calendar, spec, excluded)
    return LoadForecast(day, base * level, tuple(d for d, _ in similar), tuple(map(float, weights)), level)


def peak_window(kw: FloatArray, slots: int) -> int:
    """The first interval of the ``slots`` consecutive intervals with the highest mean."""
    if not 1 <= slots <= len(kw) or np.isnan(kw).any():
        raise ValueError("need 1 <= slots <= len(kw) and no missing values")
    sums = np.convolve(kw, np.ones(slots), mode="valid")
    return int(np.argmax(sums))


# --- PV -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PvArray:
    """One inverter's array: AC rating and orientation (azimuth 180 = south)."""

    rated_kw: float
    tilt_deg: float = 20.0
    azimuth_deg: float = 180.0

    def __post_init__(self) -> None:
        if not (self.rated_kw >= 0 and 0 <= self.tilt_deg <= 90 and 0 <= self.azimuth_deg < 360):
            raise ValueError("need rated_kw >= 0, 0 <= tilt <= 90, 0 <= azimuth < 360")


SUBSTEPS = 3  # clear-sky samples per 15-minute interval (5-minute midpoints)
_SKY_CACHE_MAX = 4096
_sky_cache: dict[tuple[float, float, date], dict[str, FloatArray]] = {}


def _skies(latitude: float, longitude: float, days: Sequence[date]) -> list[dict[str, FloatArray]]:
    """Sun position and clear-sky irradiance at the 5-minute midpoints of each local day, computed in
    one pvlib call for the days not cached yet (per-call overhead dominates a single day)."""
    missing = sorted({d for d in days if (latitude, longitude, d) not in _sky_cache})
    if missing:
        import pandas as pd  # deferred: pvlib and pandas take a second to import
        import pvlib

        step = timedelta(minutes=SLOT_MIN / SUBSTEPS)
        n = SLOTS_PER_DAY * SUBSTEPS
        stamps = [
            datetime.combine(d, datetime.min.time(), CHINA) + step / 2 + i * step
            for d in missing
            for i in range(n)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pvlib vs pandas 3, not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            site = pvlib.location.Location(latitude, longitude, altitude=ALTITUDE_M)
            times = pd.DatetimeIndex(stamps)
            sun = site.get_solarposition(times)
            sky = site.get_clearsky(
                times, model="ineichen", solar_position=sun, linke_turbidity=LINKE_TURBIDITY
            )
        columns = {
            "zenith": sun["apparent_zenith"],
            "azimuth": sun["azimuth"],
            "dni": sky["dni"],
            "ghi": sky["ghi"],
            "dhi": sky["dhi"],
        }
        arrays = {k: np.nan_to_num(v.to_numpy(dtype=np.float64)) for k, v in columns.items()}
        if len(_sky_cache) + len(missing) > _SKY_CACHE_MAX:
            _sky_cache.clear()
        for i, d in enumerate(missing):
            _sky_cache[(latitude, longitude, d)] = {k: v[i * n : (i + 1) * n] for k, v in arrays.items()}
    return [_sky_cache[(latitude, longitude, d)] for d in days]


def _place(latitude: float, longitude: float) -> tuple[float, float]:
    # 0.05° moves sunrise by seconds: sites of a town share one cached sky.
    return round(latitude * 20) / 20, round(longitude * 20) / 20


def clear_sky_poa_days(
    days: Sequence[date],
    latitude: float,
    longitude: float,
    tilt_deg: float = 20.0,
    azimuth_deg: float = 180.0,
) -> dict[date, FloatArray]:
    """Clear-sky plane-of-array irradiance (W/m²), the mean of each local 15-minute interval, per day."""
    import pvlib

    out = {}
    for day, sky in zip(days, _skies(*_place(latitude, longitude), days), strict=True):
        poa = pvlib.irradiance.get_total_irradiance(
            tilt_deg, azimuth_deg, sky["zenith"], sky["azimuth"], sky["dni"], sky["ghi"], sky["dhi"]
        )["poa_global"]
        samples = np.clip(np.nan_to_num(np.asarray(poa, dtype=np.float64)), 0.0, None)
        out[day] = samples.reshape(SLOTS_PER_DAY, SUBSTEPS).mean(axis=1)
    return out


def clear_sky_poa(
    day: date, latitude: float, longitude: float, tilt_deg: float = 20.0, azimuth_deg: float = 180.0
) -> FloatArray:
    return clear_sky_poa_days([day], latitude, longitude, tilt_deg, azimuth_deg)[day]


def pv_basis(
    days: Sequence[date], arrays: Iterable[PvArray], latitude: float, longitude: float
) -> dict[date, FloatArray]:
    """Σ rating × clear-sky POA / 1000 W/m² (kW) per day: a site's clear-sky output at performance 1."""
    total = {d: np.zeros(SLOTS_PER_DAY) for d in days}
    by_orientation: dict[tuple[float, float], float] = {}
    for a in arrays:
        key = (a.tilt_deg, a.azimuth_deg)
        by_orientation[key] = by_orientation.get(key, 0.0) + a.rated_kw
    for (tilt, azimuth), rated_kw in by_orientation.items():
        for d, poa in clear_sky_poa_days(days, latitude, longitude, tilt, azimuth).items():
            total[d] += rated_kw * poa / 1000
    return total


def daylight_slots(basis: FloatArray) -> NDArray[np.bool_]:
    return np.asarray(basis > 0)


def cloud_slots(cloud_cover: Sequence[float]) -> FloatArray:
    """Cloud cover per interval from 24 hourly or 96 quarter-hourly fractions (0 clear .. 1 overcast)."""
    values = np.asarray(cloud_cover, dtype=np.float64)
    if values.ndim != 1 or len(values) not in (24, SLOTS_PER_DAY):
        raise ValueError("cloud cover takes 24 hourly or 96 quarter-hourly values")
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError("cloud cover fractions must be within 0..1")
    return np.repeat(values, SLOTS_PER_DAY // len(values))


def clear_sky_index(cloud: FloatArray) -> FloatArray:
    """Kasten–Czeplak: GHI / clear-sky GHI = 1 − 0.75·c^3.4 for cloud cover c in 0..1."""
    return 1.0 - 0.75 * np.power(cloud, 3.4)


@dataclass(frozen=True, slots=True)
class PvCalibration:
    performance: float = 0.9  # kW per rated kW at 1000 W/m² on the plane, clear sky (DC/AC × derate)
    typical_index: float = 1.0  # mean clear-sky index of recent days, used without a cloud input
    days: int = 0  # history days the calibration rests on (0: defaults)


def calibrate_pv(
    observed: DayProfiles,
    basis: Mapping[date, FloatArray],
    quantile: float = 0.9,
    min_days: int = 3,
) -> PvCalibration:
    """From past days with complete daylight data: each day's observed ÷ clear-sky (basis) energy; the
    ``quantile`` of those ratios is the clear-day performance, their mean over it the typical index."""
    ratios = []
    for day, cs in basis.items():
        obs = observed.get(day)
        light = daylight_slots(cs)
        if obs is None or not light.any() or np.isnan(obs[light]).any():
            continue
        energy = float(cs[light].sum())
        if energy > 0:
            ratios.append(max(0.0, float(obs[light].sum())) / energy)
    if len(ratios) < min_days:
        return PvCalibration()
    performance = float(np.quantile(ratios, quantile))
    if performance <= 0:  # a dead array: forecast nothing, and say so through performance 0
        return PvCalibration(0.0, 0.0, len(ratios))
    typical = min(1.0, float(np.mean(ratios)) / performance)
    return PvCalibration(min(performance, 1.5), typical, len(ratios))


def forecast_pv(
    basis: FloatArray,
    rated_kw: float,
    calibration: PvCalibration = PvCalibration(),
    cloud: FloatArray | None = None,
) -> FloatArray:
    """PV output (kW) per interval: basis × performance × clear-sky index, within 0..rated."""
    index = clear_sky_index(cloud) if cloud is not None else calibration.typical_index
    return np.clip(basis * calibration.performance * index, 0.0, rated_kw)


# --- error --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForecastError:
    mape_pct: float | None  # None: no interval to divide by (load: all zero; PV: not reported)
    nmae_pct: float | None  # load: MAE ÷ mean |actual|; PV: MAE over daylight ÷ rated power
    bias_pct: float | None  # mean (forecast − actual) on the same normalizer as nmae
    slots: int  # intervals compared (actual known)


def mape_pct(actual: FloatArray, forecast: FloatArray) -> float | None:
    """Mean absolute percentage error over the intervals with a known, non-zero actual value."""
    a, f = np.asarray(actual, dtype=np.float64), np.asarray(forecast, dtype=np.float64)
    ok = np.isfinite(a) & (a != 0)
    if not ok.any():
        return None
    return float(np.mean(np.abs((f[ok] - a[ok]) / a[ok])) * 100)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def load_error(actual: FloatArray, forecast: FloatArray) -> ForecastError:
    known = np.isfinite(actual)
    if not known.any():
        return ForecastError(None, None, None, 0)
    a, f = actual[known], forecast[known]
    scale = float(np.mean(np.abs(a)))
    nmae = float(np.mean(np.abs(f - a))) / scale * 100 if scale > 0 else math.nan
    bias = float(np.mean(f - a)) / scale * 100 if scale > 0 else math.nan
    return ForecastError(mape_pct(a, f), _finite(nmae), _finite(bias), int(known.sum()))


def pv_error(
    actual: FloatArray, forecast: FloatArray, rated_kw: float, daylight: FloatArray
) -> ForecastError:
    compared = np.isfinite(actual) & np.asarray(daylight, dtype=bool)
    if not compared.any() or rated_kw <= 0:
        return ForecastError(None, None, None, int(compared.sum()))
    a, f = actual[compared], forecast[compared]
    nmae = float(np.mean(np.abs(f - a))) / rated_kw * 100
    bias = float(np.mean(f - a)) / rated_kw * 100
    return ForecastError(None, nmae, bias, int(compared.sum()))


def slot_start(day: date, slot: int) -> datetime:
    return datetime.combine(day, datetime.min.time(), CHINA) + timedelta(minutes=SLOT_MIN * slot)
