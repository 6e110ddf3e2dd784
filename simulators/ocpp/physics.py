"""EV physics and arrivals: what a car accepts, how its battery fills, when cars come.

Power at the connector (grid side) = min(EV acceptance, connector maximum, charging limit in force);
the battery receives it less the charger's losses. Acceptance is flat up to ``taper_from_pct`` SoC and
falls linearly to ``taper_floor`` of the maximum at 100 %, as CC/CV charging does.
"""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta

from simulators.physics.profiles import local_hour

MAX_SUBSTEP_S = 30.0

# Arrivals by local hour (fraction of the daily mean rate), piecewise linear: a morning and an evening
# peak, few cars at night. The mean over the day is 1 (checked in the tests).
_ARRIVAL_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.25),
    (5.0, 0.2),
    (7.0, 1.1),
    (9.0, 1.6),
    (12.0, 1.2),
    (14.0, 1.0),
    (17.0, 1.5),
    (19.0, 1.8),
    (22.0, 0.8),
    (24.0, 0.25),
)


def _shape_raw(hour: float) -> float:
    pts = _ARRIVAL_POINTS
    i = max(0, min(bisect_right(pts, (hour, math.inf)) - 1, len(pts) - 2))
    (h0, v0), (h1, v1) = pts[i], pts[i + 1]
    return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)


def _mean_raw() -> float:
    area = 0.0
    for (h0, v0), (h1, v1) in itertools.pairwise(_ARRIVAL_POINTS):
        area += (v0 + v1) / 2 * (h1 - h0)
    return area / 24.0


_MEAN = _mean_raw()
SHAPE_MAX = max(v for _, v in _ARRIVAL_POINTS) / _MEAN


def arrival_shape(ts: datetime) -> float:
    """Arrival rate at ``ts`` relative to the daily mean (mean 1 over a local day)."""
    return _shape_raw(local_hour(ts)) / _MEAN


def next_arrival(now: datetime, per_day: float, rng: random.Random, flat: bool = False) -> datetime | None:
    """The next arrival of a Poisson process with ``per_day`` cars a day, shaped by the hour of day
    (thinning: candidates at the peak rate, kept with probability shape/peak). None if the rate is 0."""
    if per_day <= 0:
        return None
    peak_rate = per_day / 86_400.0 * (1.0 if flat else SHAPE_MAX)
    t = now
    for _ in range(10_000):
        t += timedelta(seconds=rng.expovariate(peak_rate))
        if flat or rng.random() * SHAPE_MAX <= arrival_shape(t):
            return t
    return t


@dataclass(slots=True)
class Ev:
    """One car: its battery, what it accepts, what its driver wants."""

    capacity_wh: float
    soc_pct: float
    target_soc_pct: float
    max_ac_w: float  # on-board charger
    max_dc_w: float
    departure: datetime
    id_token: str
    efficiency: float = 0.93
    taper_from_pct: float = 80.0
    taper_floor: float = 0.08

    def acceptance_w(self, dc: bool) -> float:
        """Grid-side power the car will take now."""
        base = self.max_dc_w if dc else self.max_ac_w
        if self.soc_pct >= 100.0:
            return 0.0
        if self.soc_pct <= self.taper_from_pct:
            return base
        x = (self.soc_pct - self.taper_from_pct) / (100.0 - self.taper_from_pct)
        return base * (1.0 - (1.0 - self.taper_floor) * x)

    def absorb(self, power_w: float, dt_s: float) -> None:
        """Store ``power_w`` (grid side) for ``dt_s`` seconds."""
        if power_w <= 0 or dt_s <= 0:
            return
        stored_wh = power_w * dt_s / 3600.0 * self.efficiency
        self.soc_pct = min(100.0, self.soc_pct + stored_wh / self.capacity_wh * 100.0)

    @property
    def done(self) -> bool:
        return self.soc_pct >= self.target_soc_pct - 1e-9


def random_ev(now: datetime, rng: random.Random, dc: bool, token: str | None = None) -> Ev:
    """A car of the county's mix: small city cars to long-range SUVs; slow-pile users stay longer."""
    capacity_kwh = rng.choice((30.0, 42.0, 50.0, 60.0, 75.0, 90.0))
    soc = rng.uniform(10.0, 50.0)
    target = rng.choice((80.0, 90.0, 100.0)) if not dc else rng.choice((80.0, 85.0, 90.0))
    stay_h = rng.uniform(0.5, 1.5) if dc else rng.uniform(3.0, 12.0)
    return Ev(
        capacity_wh=capacity_kwh * 1000.0,
        soc_pct=soc,
        target_soc_pct=max(target, soc + 5.0),
        max_ac_w=rng.choice((6_600.0, 7_000.0, 11_000.0)),
        max_dc_w=rng.choice((50_000.0, 90_000.0, 120_000.0, 150_000.0)),
        departure=now + timedelta(hours=stay_h),
        id_token=token or f"{rng.getrandbits(56):014X}",
    )


def charging_power_w(ev: Ev, dc: bool, connector_max_w: float, limit_w: float | None) -> float:
    """min(EV acceptance, connector maximum, limit in force); never negative."""
    p = min(ev.acceptance_w(dc), connector_max_w)
    if limit_w is not None:
        p = min(p, limit_w)
    return max(0.0, p)
