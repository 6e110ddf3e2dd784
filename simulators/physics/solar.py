"""Clear-sky plane-of-array irradiance from pvlib, cached per (place, UTC day) at 1-minute resolution.

A pvlib/pandas call costs milliseconds; hundreds of inverters polled every second cannot afford one per
tick, so each day's curve is computed once and interpolated (a site's curve is shared by every inverter
within ~0.05 degrees, which changes sunrise by well under a minute).
"""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

LINKE_TURBIDITY = 3.8  # humid, somewhat hazy central-China air; avoids the online/HDF5 lookup
_MINUTES = 24 * 60


@lru_cache(maxsize=256)
def day_curve(latitude: float, longitude: float, tilt: float, azimuth: float, day: date) -> tuple[float, ...]:
    """POA irradiance (W/m²) at each minute of the UTC ``day``, 1441 samples (00:00 to 24:00)."""
    import pandas as pd  # deferred: pvlib/pandas take a second to import
    import pvlib

    with warnings.catch_warnings():
        # pvlib 0.16 still uses pandas APIs that pandas 3 deprecates; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _compute(pd, pvlib, latitude, longitude, tilt, azimuth, day)


def _compute(
    pd: Any,
    pvlib: Any,
    latitude: float,
    longitude: float,
    tilt: float,
    azimuth: float,
    day: date,
) -> tuple[float, ...]:
    times = pd.date_range(
        datetime(day.year, day.month, day.day, tzinfo=UTC), periods=_MINUTES + 1, freq="1min"
    )
    site = pvlib.location.Location(latitude, longitude, altitude=40.0)
    sun = site.get_solarposition(times)
    sky = site.get_clearsky(times, model="ineichen", solar_position=sun, linke_turbidity=LINKE_TURBIDITY)
    poa = pvlib.irradiance.get_total_irradiance(
        tilt, azimuth, sun["apparent_zenith"], sun["azimuth"], sky["dni"], sky["ghi"], sky["dhi"]
    )["poa_global"]
    return tuple(max(0.0, float(v)) for v in poa.fillna(0.0).to_numpy())


def clear_sky_poa(
    ts: datetime, latitude: float, longitude: float, tilt: float = 20.0, azimuth: float = 180.0
) -> float:
    """Clear-sky POA irradiance (W/m²) at an aware instant, interpolated from the cached day curve."""
    t = ts.astimezone(UTC)
    day = t.date()
    curve = day_curve(round(latitude * 20) / 20, round(longitude * 20) / 20, float(tilt), float(azimuth), day)
    minute = (t - datetime(day.year, day.month, day.day, tzinfo=UTC)) / timedelta(minutes=1)
    i = min(int(minute), _MINUTES - 1)
    frac = minute - i
    return curve[i] + (curve[i + 1] - curve[i]) * frac
