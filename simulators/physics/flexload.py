"""Flexible industrial load: a daily production profile, minus a curtailment setpoint, above a floor,
plus a load-raise setpoint, below a ceiling.

Power > 0 is consumption. Curtailment takes power off the profile but never below the process floor
(furnaces kept warm, safety systems); ``curtailment_w`` reports what is really held back. A raise
(valley filling: deferred batches, thermal storage, electric boilers brought forward) adds power on
top of the profile but never above the site's contracted maximum; ``raise_w`` reports what is really
taken on. With both setpoints non-zero the net effect counts: power is the profile minus the
curtailment plus the raise, within floor and ceiling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from simulators.physics.profiles import SHAPES, local_hour, shape_value, weekend_factor
from simulators.physics.randomness import MeanRevertingWalk

MAX_SUBSTEP_S = 60.0


@dataclass(frozen=True, slots=True)
class FlexLoadParams:
    rated_w: float  # peak consumption of the profile
    shape: str = "two_shift"
    floor_w: float | None = None  # default: 35 % of rated
    max_curtailable_w: float | None = None  # default: 40 % of rated
    max_raisable_w: float | None = None  # default: 30 % of rated
    max_load_w: float | None = None  # the ceiling a raise stops at (contracted capacity); default: rated
    power_factor: float = 0.90
    nominal_v: float = 230.0
    noise: float = 0.02
    seed: int = 0
    energy_wh: float = 0.0

    @property
    def floor(self) -> float:
        return self.floor_w if self.floor_w is not None else 0.35 * self.rated_w

    @property
    def max_curtailable(self) -> float:
        return self.max_curtailable_w if self.max_curtailable_w is not None else 0.40 * self.rated_w

    @property
    def max_raisable(self) -> float:
        return self.max_raisable_w if self.max_raisable_w is not None else 0.30 * self.rated_w

    @property
    def ceiling(self) -> float:
        return self.max_load_w if self.max_load_w is not None else self.rated_w


class FlexLoadPhysics:
    def __init__(self, p: FlexLoadParams) -> None:
        if p.shape not in SHAPES:
            raise ValueError(f"unknown load shape {p.shape!r}")
        self.p = p
        self._noise = MeanRevertingWalk(0.0, p.noise, 120.0, -3 * p.noise, 3 * p.noise, random.Random(p.seed))
        self.setpoint_w = 0.0  # curtailment asked for
        self.raise_setpoint_w = 0.0  # load raise asked for
        self.baseline_w = 0.0
        self.power_w = 0.0
        self.energy_wh = p.energy_wh
        # Shapes with a real off period have an idle state; continuous processes never idle.
        base = min(v for _, v in SHAPES[p.shape])
        self._idle_w = base * p.rated_w if base < 0.5 else 0.0

    @property
    def curtailment_w(self) -> float:
        return max(0.0, self.baseline_w - self.power_w)

    @property
    def raise_w(self) -> float:
        return max(0.0, self.power_w - self.baseline_w)

    @property
    def state(self) -> int:
        """0 idle (no production: only the base load), 1 producing, 2 curtailed, 3 raised."""
        if self.curtailment_w > 0.5:
            return 2
        if self.raise_w > 0.5:
            return 3
        return 0 if self.baseline_w <= self._idle_w * 1.05 else 1

    def step(self, now: datetime, dt_s: float) -> None:
        remaining = max(0.0, dt_s)
        while True:
            h = min(remaining, MAX_SUBSTEP_S)
            remaining -= h
            self._noise.step(h)
            before = self.power_w
            self._update(now - timedelta(seconds=remaining))
            self.energy_wh += (before + self.power_w) / 2.0 * h / 3600.0
            if remaining <= 0:
                break

    def _update(self, ts: datetime) -> None:
        p = self.p
        self.baseline_w = p.rated_w * shape_value(p.shape, local_hour(ts)) * weekend_factor(ts, p.shape)
        self.baseline_w *= 1.0 + self._noise.value
        curtail = max(0.0, min(self.setpoint_w, p.max_curtailable))
        power = max(self.baseline_w - curtail, min(self.baseline_w, p.floor))
        extra = max(0.0, min(self.raise_setpoint_w, p.max_raisable))
        # A raise never pushes above the ceiling, nor pulls a profile already above it down.
        self.power_w = max(power, min(power + extra, max(p.ceiling, self.baseline_w)))
