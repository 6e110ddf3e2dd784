"""Battery storage: SoC integrates the power actually delivered, with losses, inside SoC bounds.

Sign convention (SunSpec and the metric catalogue): power > 0 discharges (output), < 0 charges.
The power at the terminals is what is reported; losses show up in the SoC (charging stores less than it
draws, discharging drains more than it delivers).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from simulators.physics.profiles import local_hour
from simulators.physics.randomness import MeanRevertingWalk

MAX_SUBSTEP_S = 60.0


@dataclass(frozen=True, slots=True)
class BatteryParams:
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    round_trip_efficiency: float = 0.92
    soc_min_pct: float = 5.0  # hardware floor (802 SoCMin)
    soc_max_pct: float = 98.0  # hardware ceiling (802 SoCMax)
    initial_soc_pct: float = 50.0
    soh_pct: float = 97.0
    nominal_dc_v: float = 768.0
    cells_in_series: int = 240
    # Without remote control (124 StorCtl_Mod = 0): charge late morning, discharge in the evening peak.
    local_schedule: bool = True
    seed: int = 0


@dataclass(slots=True)
class BatteryControl:
    """The remote controls in force (SunSpec 124/802), in physical units."""

    charge_enabled: bool = False  # StorCtl_Mod bit 0: InWRte applies
    discharge_enabled: bool = False  # StorCtl_Mod bit 1: OutWRte applies
    out_pct: float = 0.0  # OutWRte, % of WChaMax; negative means charge
    in_pct: float = 0.0  # InWRte, % of WChaMax; negative means discharge
    wcha_max_w: float = 0.0  # WChaMax: the base for both rates
    reserve_min_pct: float = 0.0  # 802 SoCRsvMin (0 = none)
    reserve_max_pct: float = 100.0  # 802 SocRsvMax
    connected: bool = True  # 802 SetOp CONNECT/DISCONNECT


class BatteryPhysics:
    def __init__(self, p: BatteryParams) -> None:
        self.p = p
        self.control = BatteryControl(wcha_max_w=p.max_charge_w)
        self.soc_pct = min(p.soc_max_pct, max(p.soc_min_pct, p.initial_soc_pct))
        self.power_w = 0.0
        self.setpoint_w = 0.0
        self.energy_export_wh = 0.0
        self.energy_import_wh = 0.0
        self._eff = math.sqrt(p.round_trip_efficiency)  # one way
        self._ripple = MeanRevertingWalk(0.0, 0.003, 30.0, -0.01, 0.01, random.Random(p.seed))

    @property
    def soc_floor_pct(self) -> float:
        return max(self.p.soc_min_pct, self.control.reserve_min_pct)

    @property
    def soc_ceiling_pct(self) -> float:
        return min(self.p.soc_max_pct, self.control.reserve_max_pct)

    @property
    def charge_limit_w(self) -> float:
        return min(self.p.max_charge_w, max(0.0, self.control.wcha_max_w))

    @property
    def discharge_limit_w(self) -> float:
        return self.p.max_discharge_w

    def commanded_w(self, ts: datetime) -> float:
        """The power asked for (+ discharge), before SoC bounds; from 124 controls or the local schedule."""
        c = self.control
        if not c.connected:
            return 0.0
        base = max(0.0, c.wcha_max_w)
        if c.charge_enabled or c.discharge_enabled:
            w = 0.0
            if c.discharge_enabled:
                w += c.out_pct / 100.0 * base
            if c.charge_enabled:
                w -= c.in_pct / 100.0 * base
            return w
        if not self.p.local_schedule:
            return 0.0
        hour = local_hour(ts)
        if 10.0 <= hour < 15.0:
            return -0.5 * base
        if 18.0 <= hour < 21.5:
            return 0.5 * base
        return 0.0

    def step(self, now: datetime, dt_s: float) -> None:
        remaining = max(0.0, dt_s)
        while True:
            h = min(remaining, MAX_SUBSTEP_S)
            remaining -= h
            self._substep(now - timedelta(seconds=remaining), h)
            if remaining <= 0:
                break

    def _substep(self, ts: datetime, h: float) -> None:
        cap = self.p.capacity_wh
        self.setpoint_w = self.commanded_w(ts)
        w = max(-self.charge_limit_w, min(self.discharge_limit_w, self.setpoint_w))
        if h > 0:
            # Never push through a bound within one sub-step: cap the power at what reaches the bound.
            if w > 0:
                room_wh = max(0.0, self.soc_pct - self.soc_floor_pct) / 100.0 * cap * self._eff
                w = min(w, room_wh * 3600.0 / h)
            elif w < 0:
                room_wh = max(0.0, self.soc_ceiling_pct - self.soc_pct) / 100.0 * cap / self._eff
                w = max(w, -room_wh * 3600.0 / h)
        else:
            if (w > 0 and self.soc_pct <= self.soc_floor_pct) or (
                w < 0 and self.soc_pct >= self.soc_ceiling_pct
            ):
                w = 0.0
        self.power_w = w
        if h <= 0:
            return
        self._ripple.step(h)
        energy_wh = w * h / 3600.0
        if w > 0:
            self.soc_pct -= energy_wh / self._eff / cap * 100.0
            self.energy_export_wh += energy_wh
        elif w < 0:
            self.soc_pct += -energy_wh * self._eff / cap * 100.0
            self.energy_import_wh += -energy_wh
        self.soc_pct = min(100.0, max(0.0, self.soc_pct))

    # DC side, for model 802.
    @property
    def dc_voltage_v(self) -> float:
        open_circuit = self.p.nominal_dc_v * (0.90 + 0.16 * self.soc_pct / 100.0)
        sag = 0.02 * self.p.nominal_dc_v * self.power_w / max(1.0, self.p.max_discharge_w)
        return open_circuit * (1.0 + self._ripple.value) - sag

    @property
    def dc_current_a(self) -> float:
        return self.power_w / self.dc_voltage_v

    @property
    def cell_voltage_v(self) -> float:
        return self.dc_voltage_v / self.p.cells_in_series

    @property
    def cycles(self) -> int:
        return int(self.energy_export_wh / self.p.capacity_wh)

    @property
    def charge_status(self) -> int:
        """SunSpec ChaSt: 2 empty, 3 discharging, 4 charging, 5 full, 6 holding (1 off when disconnected)."""
        if not self.control.connected:
            return 1
        if self.power_w > 0:
            return 3
        if self.power_w < 0:
            return 4
        if self.soc_pct <= self.soc_floor_pct + 1e-6:
            return 2
        if self.soc_pct >= self.soc_ceiling_pct - 1e-6:
            return 5
        return 6
