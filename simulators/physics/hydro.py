"""Small hydro unit with a forebay reservoir: output follows the setpoint within the ramp limit and the water.

P = rho x g x head x flow x efficiency. The reservoir fills with the natural inflow and drains through the
turbine (spilling when full); at the minimum level the unit trips to zero and restarts only once the
level has recovered by ``restart_margin_m``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from simulators.physics.randomness import MeanRevertingWalk

RHO_G = 1000.0 * 9.81  # water density x gravity, N/m³
MAX_SUBSTEP_S = 5.0  # the level can reach the minimum within a step; keep the trip timely


@dataclass(frozen=True, slots=True)
class HydroParams:
    rated_w: float
    head_m: float = 35.0  # gross head with the reservoir at the intake sill
    efficiency: float = 0.86
    reservoir_area_m2: float = 40_000.0
    min_level_m: float = 1.0
    max_level_m: float = 6.0
    initial_level_m: float = 4.0
    restart_margin_m: float = 0.3
    mean_inflow_m3s: float | None = None  # default: enough for ``typical_output_w``
    inflow_sigma: float = 0.08  # relative
    typical_output_w: float | None = None  # default setpoint; default 45 % of rated
    ramp_kw_per_min: float | None = None  # default: 20 % of rated per minute
    seed: int = 0
    energy_wh: float = 0.0

    @property
    def typical_w(self) -> float:
        return self.typical_output_w if self.typical_output_w is not None else 0.45 * self.rated_w

    @property
    def max_flow_m3s(self) -> float:
        """Turbine flow at full gate: enough for rated power at the lowest working head."""
        return self.rated_w / (RHO_G * (self.head_m + self.min_level_m) * self.efficiency)

    @property
    def inflow_m3s(self) -> float:
        if self.mean_inflow_m3s is not None:
            return self.mean_inflow_m3s
        mid_head = self.head_m + (self.min_level_m + self.max_level_m) / 2
        return self.typical_w / (RHO_G * mid_head * self.efficiency)


class HydroPhysics:
    def __init__(self, p: HydroParams) -> None:
        self.p = p
        self.level_m = min(p.max_level_m, max(p.min_level_m, p.initial_level_m))
        mean = p.inflow_m3s
        self._inflow = MeanRevertingWalk(
            mean, p.inflow_sigma * mean, 3600.0, 0.2 * mean, 3.0 * mean, random.Random(p.seed)
        )
        self.setpoint_w = min(p.rated_w, p.typical_w)
        default_ramp = max(1.0, round(0.2 * p.rated_w / 1000.0))
        self.ramp_kw_per_min = p.ramp_kw_per_min if p.ramp_kw_per_min is not None else default_ramp
        self.running = self.level_m > p.min_level_m
        self.power_w = self.setpoint_w if self.running else 0.0  # start in steady state
        self.flow_m3s = self._flow_for(self.power_w)
        self.energy_wh = p.energy_wh

    @property
    def inflow_m3s(self) -> float:
        return self._inflow.value

    @property
    def head_now_m(self) -> float:
        return self.p.head_m + self.level_m

    @property
    def water_limit_w(self) -> float:
        """The most the water allows now: full gate at the present head, within the rating."""
        if not self.running:
            return 0.0
        return min(self.p.rated_w, RHO_G * self.head_now_m * self.p.max_flow_m3s * self.p.efficiency)

    @property
    def gate_pct(self) -> float:
        return 100.0 * self.flow_m3s / self.p.max_flow_m3s

    @property
    def state(self) -> int:
        """0 stopped, 1 generating (2 fault is never simulated)."""
        return 1 if self.power_w > 0 else 0

    def _flow_for(self, power_w: float) -> float:
        return power_w / (RHO_G * self.head_now_m * self.p.efficiency)

    def step(self, now: datetime, dt_s: float) -> None:
        remaining = max(0.0, dt_s)
        while remaining > 0:
            h = min(remaining, MAX_SUBSTEP_S)
            remaining -= h
            self._substep(h)

    def _substep(self, h: float) -> None:
        p = self.p
        self._inflow.step(h)
        if not self.running and self.level_m >= p.min_level_m + p.restart_margin_m:
            self.running = True
        target = min(self.setpoint_w, self.water_limit_w) if self.running else 0.0
        ramp_w = self.ramp_kw_per_min * 1000.0 / 60.0 * h
        self.power_w = max(self.power_w - ramp_w, min(self.power_w + ramp_w, target))
        self.power_w = max(0.0, min(self.power_w, self.water_limit_w))
        self.flow_m3s = self._flow_for(self.power_w)
        self.energy_wh += self.power_w * h / 3600.0
        self.level_m += (self.inflow_m3s - self.flow_m3s) * h / p.reservoir_area_m2
        self.level_m = min(p.max_level_m, self.level_m)  # the rest spills over the weir
        if self.level_m <= p.min_level_m:
            # Out of water: protect the turbine from vortex/air intake, trip and wait for the level.
            self.level_m = max(self.level_m, p.min_level_m - 0.05)
            self.running = False
            self.power_w = 0.0
            self.flow_m3s = 0.0
