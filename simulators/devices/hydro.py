"""Small hydro unit, register map ``lixian-hydro-v1`` (docs/register-maps.md)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.devices.vendor_words import to_u32, u16, u32
from simulators.physics.grid import GridConditions
from simulators.physics.hydro import HydroParams, HydroPhysics
from simulators.registers import WriteRule

SETPOINT, RAMP = 100, 102


class HydroDevice(SimDevice):
    kind = "hydro"
    # docs/register-maps.md: the scale of each metric's register
    RESOLUTION: ClassVar[dict[str, float]] = {
        "reservoir_level_m": 0.01,
        "inflow_m3s": 0.01,
        "discharge_flow_m3s": 0.01,
        "gate_opening_pct": 0.1,
        "active_power_w": 1.0,
        "frequency_hz": 0.01,
        "voltage_v": 0.1,
        "energy_export_wh": 1000.0,
        "operating_state": 1.0,
        "rated_power_w": 1.0,
        "active_power_setpoint_w": 1.0,
    }

    def __init__(
        self,
        key: str,
        clock: SimClock,
        params: HydroParams,
        *,
        unit_id: int = 1,
        nominal_v: float = 230.0,
    ) -> None:
        super().__init__(key, clock, unit_id)
        self.physics = HydroPhysics(params)
        self.grid = GridConditions(nominal_v, seed=params.seed)
        rated = params.rated_w
        regs = self.registers
        regs.define(0, [0] * 13)
        regs.define(SETPOINT, u32(self.physics.setpoint_w) + u16(self.physics.ramp_kw_per_min))
        regs.allow_write(WriteRule("output setpoint", SETPOINT, 2, lambda r: 0 <= to_u32(r) <= rated))
        regs.allow_write(WriteRule("ramp limit", RAMP, 1, lambda r: 1 <= r[0] <= 10_000))
        regs.poke(11, u32(rated))

    def _load_controls(self, now: datetime) -> None:
        r = self.registers.read(SETPOINT, 3)
        self.physics.setpoint_w = float(to_u32(r[0:2]))
        self.physics.ramp_kw_per_min = float(r[2])

    def _step(self, now: datetime, dt_s: float) -> None:
        self.grid.step(dt_s)
        self.physics.step(now, dt_s)

    def _voltage(self) -> float:
        return sum(self.grid.phase_voltages_v(0.01 * self.physics.power_w / self.physics.p.rated_w)) / 3

    def _refresh(self) -> None:
        ph = self.physics
        self.registers.poke(
            0,
            [
                *u16(ph.level_m * 100),
                *u16(ph.inflow_m3s * 100),
                *u16(ph.flow_m3s * 100),
                *u16(ph.gate_pct * 10),
                *u32(ph.power_w),
                *u16(self.grid.frequency_hz * 100),
                *u16(self._voltage() * 10),
                *u32(ph.energy_wh // 1000),
                *u16(ph.state),
            ],
        )

    def metrics(self) -> dict[str, float]:
        ph = self.physics
        return {
            "reservoir_level_m": ph.level_m,
            "inflow_m3s": ph.inflow_m3s,
            "discharge_flow_m3s": ph.flow_m3s,
            "gate_opening_pct": ph.gate_pct,
            "active_power_w": ph.power_w,
            "frequency_hz": self.grid.frequency_hz,
            "voltage_v": self._voltage(),
            "energy_export_wh": ph.energy_wh,
            "operating_state": float(ph.state),
            "rated_power_w": ph.p.rated_w,
            "active_power_setpoint_w": ph.setpoint_w,
        }

    def resolutions(self) -> dict[str, float]:
        return dict(self.RESOLUTION)
