"""Flexible industrial load, register map ``lixian-flexload-v1`` (docs/register-maps.md)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.devices.vendor_words import i16, i32, to_u32, u16, u32
from simulators.physics.flexload import FlexLoadParams, FlexLoadPhysics
from simulators.physics.grid import GridConditions
from simulators.registers import WriteRule

SETPOINT, RAISE_SETPOINT = 100, 102


class FlexLoadDevice(SimDevice):
    kind = "load"
    # docs/register-maps.md: the scale of each metric's register
    RESOLUTION: ClassVar[dict[str, float]] = {
        "active_power_w": 1.0,
        "voltage_v": 0.1,
        "current_a": 0.1,
        "power_factor": 0.001,
        "frequency_hz": 0.01,
        "energy_import_wh": 1000.0,
        "curtailment_w": 1.0,
        "operating_state": 1.0,
        "max_curtailable_w": 1.0,
        "max_raisable_w": 1.0,
        "load_raise_w": 1.0,
    }

    def __init__(
        self,
        key: str,
        clock: SimClock,
        params: FlexLoadParams,
        *,
        unit_id: int = 1,
        nominal_v: float = 230.0,
    ) -> None:
        super().__init__(key, clock, unit_id)
        self.physics = FlexLoadPhysics(params)
        self.grid = GridConditions(nominal_v, seed=params.seed)
        max_curtail, max_raise = params.max_curtailable, params.max_raisable
        self.registers.define(0, [0] * 17)
        self.registers.define(SETPOINT, u32(0) + u32(0))
        self.registers.allow_write(
            WriteRule("curtailment setpoint", SETPOINT, 2, lambda r: 0 <= to_u32(r) <= max_curtail)
        )
        self.registers.allow_write(
            WriteRule("load raise setpoint", RAISE_SETPOINT, 2, lambda r: 0 <= to_u32(r) <= max_raise)
        )
        self.registers.poke(11, u32(max_curtail))
        self.registers.poke(13, u32(max_raise))

    def _load_controls(self, now: datetime) -> None:
        r = self.registers.read(SETPOINT, 4)
        self.physics.setpoint_w = float(to_u32(r[0:2]))
        self.physics.raise_setpoint_w = float(to_u32(r[2:4]))

    def _step(self, now: datetime, dt_s: float) -> None:
        self.grid.step(dt_s)
        self.physics.step(now, dt_s)

    def _voltage(self) -> float:
        ph = self.physics
        return sum(self.grid.phase_voltages_v(-0.01 * ph.power_w / ph.p.rated_w)) / 3

    def _current(self) -> float:
        return self.physics.power_w / (self._voltage() * self.physics.p.power_factor)  # sum of the phases

    def _refresh(self) -> None:
        ph = self.physics
        self.registers.poke(
            0,
            [
                *i32(ph.power_w),
                *u16(self._voltage() * 10),
                *u16(self._current() * 10),
                *i16(ph.p.power_factor * 1000),
                *u16(self.grid.frequency_hz * 100),
                *u32(ph.energy_wh // 1000),
                *u32(ph.curtailment_w),
                *u16(ph.state),
            ],
        )
        self.registers.poke(15, u32(ph.raise_w))

    def metrics(self) -> dict[str, float]:
        ph = self.physics
        return {
            "active_power_w": ph.power_w,
            "voltage_v": self._voltage(),
            "current_a": self._current(),
            "power_factor": ph.p.power_factor,
            "frequency_hz": self.grid.frequency_hz,
            "energy_import_wh": ph.energy_wh,
            "curtailment_w": ph.curtailment_w,
            "operating_state": float(ph.state),
            "max_curtailable_w": ph.p.max_curtailable,
            "max_raisable_w": ph.p.max_raisable,
            "load_raise_w": ph.raise_w,
        }

    def resolutions(self) -> dict[str, float]:
        return dict(self.RESOLUTION)
