"""PV inverter served as SunSpec models 1, 103 (three-phase inverter), 120 (nameplate), 123 (controls).

Implemented 123 controls: WMaxLimPct (0-100 %, WMaxLimPct_SF = 0) with WMaxLim_Ena, WMaxLimPct_RvrtTms
(limit disabled again that many seconds after the last write), Conn (0 = disconnect) with Conn_RvrtTms.
Window and ramp times are stored but act immediately. Other 123 points are not implemented (read-only).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import ClassVar

from simulators.clock import SimClock
from simulators.devices.sunspec_device import SunSpecDevice
from simulators.physics.grid import GridConditions
from simulators.physics.pv import PvParams, PvPhysics
from simulators.registers import WriteRule, pick_scale_factor

ST_OFF, ST_SLEEPING, ST_MPPT, ST_THROTTLED = 1, 2, 4, 5


class PvInverterDevice(SunSpecDevice):
    kind = "pv_inverter"
    POINT_OF_METRIC: ClassVar[dict[str, tuple[int, str]]] = {
        "active_power_w": (103, "W"),
        "reactive_power_var": (103, "VAr"),
        "apparent_power_va": (103, "VA"),
        "power_factor": (103, "PF"),
        "voltage_l1_v": (103, "PhVphA"),
        "voltage_l2_v": (103, "PhVphB"),
        "voltage_l3_v": (103, "PhVphC"),
        "current_a": (103, "A"),
        "frequency_hz": (103, "Hz"),
        "energy_export_wh": (103, "WH"),
        "dc_power_w": (103, "DCW"),
        "dc_voltage_v": (103, "DCV"),
        "dc_current_a": (103, "DCA"),
        "temperature_c": (103, "TmpCab"),
        "operating_state": (103, "St"),
        "active_power_limit_pct": (123, "WMaxLimPct"),
        "rated_power_w": (120, "WRtg"),
    }

    def __init__(
        self,
        key: str,
        clock: SimClock,
        params: PvParams,
        *,
        unit_id: int = 1,
        vendor: str | None = None,
        model_name: str | None = None,
        nominal_v: float = 230.0,
    ) -> None:
        super().__init__(key, clock, unit_id, vendor, model_name)
        self.physics = PvPhysics(params)
        self.grid = GridConditions(nominal_v, seed=params.seed)
        self._limit_written_at: datetime | None = None
        self._conn_written_at: datetime | None = None
        rated = params.rated_w
        ss = self.sunspec
        ss.add_model(103)
        w_sf = pick_scale_factor(rated * 1.2, signed=True, finest=0)
        for name, sf in (
            ("A_SF", pick_scale_factor(rated / nominal_v * 1.3, signed=False, finest=-2)),
            ("V_SF", pick_scale_factor(nominal_v * math.sqrt(3) * 1.2, signed=False, finest=-1)),
            ("W_SF", w_sf),
            ("Hz_SF", -2),
            ("VA_SF", w_sf),
            ("VAr_SF", w_sf),
            ("PF_SF", -1),
            ("WH_SF", pick_scale_factor(rated * 8760, signed=False, finest=0, registers=2)),
            ("DCA_SF", pick_scale_factor(rated / params.nominal_dc_v * 1.5, signed=False, finest=-2)),
            ("DCV_SF", pick_scale_factor(params.nominal_dc_v * 1.3, signed=False, finest=-1)),
            ("DCW_SF", w_sf),
            ("Tmp_SF", -1),
        ):
            ss.set_sf(103, name, sf)
        ss.add_model(120)
        ss.set_raw(120, "DERTyp", 4)  # PV
        a_rtg_sf = pick_scale_factor(rated / (3 * nominal_v) * 1.2, signed=False, finest=-1)
        for name, sf in (("WRtg_SF", w_sf), ("VARtg_SF", w_sf), ("VArRtg_SF", w_sf), ("ARtg_SF", a_rtg_sf)):
            ss.set_sf(120, name, sf)
        ss.set(120, "WRtg", rated)
        ss.set(120, "VARtg", rated)
        ss.set(120, "ARtg", rated / (3 * nominal_v))
        ss.add_model(123)
        ss.set_sf(123, "WMaxLimPct_SF", 0)
        for name, value in (
            ("Conn_WinTms", 0),
            ("Conn_RvrtTms", 0),
            ("Conn", 1),
            ("WMaxLimPct", 100),
            ("WMaxLimPct_WinTms", 0),
            ("WMaxLimPct_RvrtTms", 0),
            ("WMaxLimPct_RmpTms", 0),
            ("WMaxLim_Ena", 0),
        ):
            ss.set_raw(123, name, value)
        for name in (
            "Conn_WinTms",
            "Conn_RvrtTms",
            "WMaxLimPct_WinTms",
            "WMaxLimPct_RvrtTms",
            "WMaxLimPct_RmpTms",
        ):
            ss.writable(123, name)
        ss.writable(123, "Conn", allowed=(0, 1))
        ss.writable(123, "WMaxLimPct", 0, 100)
        ss.writable(123, "WMaxLim_Ena", allowed=(0, 1))
        ss.end()

    def _on_write(self, rules: list[WriteRule], now: datetime) -> None:
        names = {r.name.rsplit(".", 1)[-1] for r in rules}
        if names & {"WMaxLimPct", "WMaxLim_Ena"}:
            self._limit_written_at = now
        if "Conn" in names:
            self._conn_written_at = now

    def _reverted(self, written_at: datetime | None, timeout_point: str, now: datetime) -> bool:
        timeout = self.sunspec.get_raw(123, timeout_point)
        return bool(
            written_at
            and isinstance(timeout, int)
            and timeout > 0
            and (now - written_at).total_seconds() >= timeout
        )

    def _load_controls(self, now: datetime) -> None:
        ss, ph = self.sunspec, self.physics
        if self._reverted(self._limit_written_at, "WMaxLimPct_RvrtTms", now):
            ss.set_raw(123, "WMaxLim_Ena", 0)
            self._limit_written_at = None
        if self._reverted(self._conn_written_at, "Conn_RvrtTms", now):
            ss.set_raw(123, "Conn", 1)
            self._conn_written_at = None
        ph.limit_pct = ss.get(123, "WMaxLimPct") or 0.0
        ph.limit_enabled = ss.get_raw(123, "WMaxLim_Ena") == 1
        ph.connected = ss.get_raw(123, "Conn") != 0

    def _step(self, now: datetime, dt_s: float) -> None:
        self.grid.step(dt_s)
        self.physics.step(now, dt_s)

    def _phase_currents(self) -> tuple[float, float, float]:
        v = self._voltages()
        share = self.physics.power_w / 3
        return share / v[0], share / v[1], share / v[2]

    def _voltages(self) -> tuple[float, float, float]:
        ph = self.physics
        return self.grid.phase_voltages_v(0.01 * ph.power_w / ph.p.rated_w)

    def _refresh(self) -> None:
        ss, ph = self.sunspec, self.physics
        v = self._voltages()
        a = self._phase_currents()
        ss.set(103, "A", sum(a))
        for name, value in zip(("AphA", "AphB", "AphC"), a, strict=True):
            ss.set(103, name, value)
        for name, value in zip(("PhVphA", "PhVphB", "PhVphC"), v, strict=True):
            ss.set(103, name, value)
        for name, (x, y) in zip(("PPVphAB", "PPVphBC", "PPVphCA"), ((0, 1), (1, 2), (2, 0)), strict=True):
            ss.set(103, name, (v[x] + v[y]) / 2 * math.sqrt(3))
        ss.set(103, "W", ph.power_w)
        ss.set(103, "Hz", self.grid.frequency_hz)
        ss.set(103, "VA", ph.power_w)
        ss.set(103, "VAr", 0.0)
        ss.set(103, "PF", 100.0)  # percent, per the model's units
        ss.set(103, "WH", ph.energy_wh)
        ss.set(103, "DCA", ph.dc_power_w / ph.dc_voltage_v if ph.power_w else 0.0)
        ss.set(103, "DCV", ph.dc_voltage_v)
        ss.set(103, "DCW", ph.dc_power_w)
        ss.set(103, "TmpCab", ph.temperature_c)
        ss.set_raw(103, "St", self._state())
        ss.set_raw(103, "Evt1", 0)

    def _state(self) -> int:
        ph = self.physics
        if not ph.connected:
            return ST_OFF
        if ph.available_w <= 0:
            return ST_SLEEPING
        return ST_THROTTLED if ph.throttled else ST_MPPT

    def metrics(self) -> dict[str, float]:
        ph = self.physics
        v = self._voltages()
        return {
            "active_power_w": ph.power_w,
            "reactive_power_var": 0.0,
            "apparent_power_va": ph.power_w,
            "power_factor": 1.0,
            "voltage_l1_v": v[0],
            "voltage_l2_v": v[1],
            "voltage_l3_v": v[2],
            "current_a": sum(self._phase_currents()),
            "frequency_hz": self.grid.frequency_hz,
            "energy_export_wh": ph.energy_wh,
            "dc_power_w": ph.dc_power_w,
            "dc_voltage_v": ph.dc_voltage_v,
            "dc_current_a": ph.dc_power_w / ph.dc_voltage_v if ph.power_w else 0.0,
            "temperature_c": ph.temperature_c,
            "operating_state": float(self._state()),
            "active_power_limit_pct": ph.limit_w / ph.p.rated_w * 100.0,
            "rated_power_w": ph.p.rated_w,
        }
