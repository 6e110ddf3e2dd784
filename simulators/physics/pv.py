"""PV inverter: clear-sky irradiance x a cloud random walk, clipped by rating and the active-power limit."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from simulators.physics.randomness import MeanRevertingWalk
from simulators.physics.solar import clear_sky_poa

MAX_SUBSTEP_S = 60.0  # the cloud walk and energy integration stay smooth across long lazy gaps


@dataclass(frozen=True, slots=True)
class PvParams:
    rated_w: float
    latitude: float = 29.6
    longitude: float = 111.7
    tilt_deg: float = 20.0
    azimuth_deg: float = 180.0
    dc_ac_ratio: float = 1.15  # array oversizing: clear noon clips at the inverter's rating
    derate: float = 0.88  # soiling, wiring, temperature
    cloud_mean: float = 0.85  # average fraction of clear-sky irradiance that gets through
    cloud_sigma: float = 0.12
    cloud_tau_s: float = 600.0
    nominal_dc_v: float = 620.0
    seed: int = 0
    energy_wh: float = 0.0  # lifetime counter at start


class PvPhysics:
    def __init__(self, p: PvParams) -> None:
        self.p = p
        self._cloud = MeanRevertingWalk(
            p.cloud_mean, p.cloud_sigma, p.cloud_tau_s, 0.05, 1.0, random.Random(p.seed)
        )
        self.limit_pct = 100.0
        self.limit_enabled = False
        self.connected = True
        self.irradiance_wm2 = 0.0
        self.available_w = 0.0  # what the array could deliver now, before the limit
        self.power_w = 0.0
        self.energy_wh = p.energy_wh

    @property
    def limit_w(self) -> float:
        """The cap in force: rating, lowered by WMaxLimPct while the limit is enabled."""
        if not self.connected:
            return 0.0
        if self.limit_enabled:
            return self.p.rated_w * max(0.0, min(100.0, self.limit_pct)) / 100.0
        return self.p.rated_w

    @property
    def throttled(self) -> bool:
        return self.available_w > self.limit_w + 1e-9 and self.limit_w < self.p.rated_w

    def step(self, now: datetime, dt_s: float) -> None:
        """Advance to ``now`` (``dt_s`` seconds after the previous step); the state then describes ``now``."""
        remaining = max(0.0, dt_s)
        while True:
            h = min(remaining, MAX_SUBSTEP_S)
            remaining -= h
            self._cloud.step(h)
            before = self.power_w
            self._update(now - timedelta(seconds=remaining))
            self.energy_wh += (before + self.power_w) / 2.0 * h / 3600.0  # trapezoid over the sub-step
            if remaining <= 0:
                break

    def _update(self, ts: datetime) -> None:
        poa = clear_sky_poa(ts, self.p.latitude, self.p.longitude, self.p.tilt_deg, self.p.azimuth_deg)
        self.irradiance_wm2 = poa * self._cloud.value
        self.available_w = min(
            self.p.rated_w * 1.1,
            self.p.rated_w * self.p.dc_ac_ratio * self.p.derate * self.irradiance_wm2 / 1000.0,
        )
        self.power_w = max(0.0, min(self.available_w, self.limit_w, self.p.rated_w))

    @property
    def dc_voltage_v(self) -> float:
        return (
            self.p.nominal_dc_v * (0.92 + 0.08 * min(1.0, self.irradiance_wm2 / 1000.0))
            if self.power_w
            else 0.0
        )

    @property
    def dc_power_w(self) -> float:
        return self.power_w / 0.975 if self.power_w else 0.0  # inverter efficiency

    @property
    def temperature_c(self) -> float:
        return 25.0 + 30.0 * self.power_w / self.p.rated_w
