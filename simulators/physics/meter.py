"""Three-phase meter (grid connection or transformer): own load profile + what the site's devices do.

Sign: power > 0 is import (consumption seen from the grid), < 0 export. Energy counters integrate
each direction separately.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from simulators.physics.grid import GridConditions
from simulators.physics.profiles import local_hour, shape_value, weekend_factor
from simulators.physics.randomness import MeanRevertingWalk

MAX_SUBSTEP_S = 60.0


@dataclass(frozen=True, slots=True)
class MeterParams:
    peak_load_w: float  # the meter's own (unmodelled) load at the profile's peak
    shape: str = "two_shift"
    power_factor: float = 0.95
    nominal_v: float = 230.0  # phase to neutral
    frequency_hz: float = 50.0
    noise: float = 0.03  # relative load noise
    seed: int = 0
    energy_import_wh: float = 0.0
    energy_export_wh: float = 0.0


class MeterPhysics:
    def __init__(self, p: MeterParams) -> None:
        self.p = p
        rng = random.Random(p.seed)
        self._noise = MeanRevertingWalk(0.0, p.noise, 300.0, -3 * p.noise, 3 * p.noise, rng)
        self.grid = GridConditions(p.nominal_v, p.frequency_hz, p.seed)
        self._share = [MeanRevertingWalk(1 / 3, 0.01, 900.0, 0.30, 0.37, rng) for _ in range(3)]
        self.own_w = 0.0
        self.external_w = 0.0  # the site's modelled devices (loads +, generation and discharge -)
        self.power_w = 0.0
        self.energy_import_wh = p.energy_import_wh
        self.energy_export_wh = p.energy_export_wh

    def step(self, now: datetime, dt_s: float, external_w: float = 0.0) -> None:
        remaining = max(0.0, dt_s)
        ext0 = self.external_w
        while True:
            h = min(remaining, MAX_SUBSTEP_S)
            remaining -= h
            ts = now - timedelta(seconds=remaining)
            self._noise.step(h)
            self.grid.step(h)
            for walk in self._share:
                walk.step(h)
            before = self.power_w
            self.own_w = (
                self.p.peak_load_w
                * shape_value(self.p.shape, local_hour(ts))
                * weekend_factor(ts, self.p.shape)
                * (1.0 + self._noise.value)
            )
            # The devices are only known at ``now``; between steps they are interpolated linearly.
            frac = 1.0 - remaining / dt_s if dt_s > 0 else 1.0
            self.external_w = ext0 + (external_w - ext0) * frac
            self.power_w = self.own_w + self.external_w
            mean_w = (before + self.power_w) / 2.0 * h / 3600.0
            if mean_w > 0:
                self.energy_import_wh += mean_w
            else:
                self.energy_export_wh += -mean_w
            if remaining <= 0:
                break

    @property
    def frequency_hz(self) -> float:
        return self.grid.frequency_hz

    @property
    def phase_voltages_v(self) -> tuple[float, float, float]:
        # Heavy import sags the voltage a little, export lifts it.
        return self.grid.phase_voltages_v(-0.015 * self.power_w / max(1.0, self.p.peak_load_w))

    @property
    def phase_powers_w(self) -> tuple[float, float, float]:
        total_share = sum(w.value for w in self._share)
        s = [self.power_w * w.value / total_share for w in self._share]
        return s[0], s[1], s[2]

    @property
    def apparent_power_va(self) -> float:
        return abs(self.power_w) / self.p.power_factor

    @property
    def reactive_power_var(self) -> float:
        return math.copysign(self.apparent_power_va * math.sin(math.acos(self.p.power_factor)), self.power_w)

    @property
    def phase_currents_a(self) -> tuple[float, float, float]:
        va = [abs(w) / self.p.power_factor for w in self.phase_powers_w]
        v = self.phase_voltages_v
        return va[0] / v[0], va[1] / v[1], va[2] / v[2]
