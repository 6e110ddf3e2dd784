"""Battery storage served as SunSpec models 1, 120 (nameplate), 124 (basic storage controls), 802 (battery).

124 semantics (SunSpec): WChaMax is the base of both rates; StorCtl_Mod bit 0 (CHARGE) makes InWRte the
charge rate, bit 1 (DISCHARGE) makes OutWRte the discharge rate, both in % of WChaMax (InOutWRte_SF = 0),
a negative rate meaning the opposite direction; with both bits set the net of the two applies. With no
bit set the unit runs its local schedule (or holds, if ``local_schedule`` is off). InOutWRte_RvrtTms > 0
clears StorCtl_Mod that many seconds after the last write of a 124 rate/mode. MinRsvPct (124) and
SoCRsvMin/SocRsvMax (802) narrow the SoC band the unit works in. 802 SetOp DISCONNECT (2) stops it.
802 W and A are + for discharge.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from simulators.clock import SimClock
from simulators.devices.sunspec_device import SunSpecDevice
from simulators.physics.battery import BatteryParams, BatteryPhysics
from simulators.registers import WriteRule, pick_scale_factor

_RATE_POINTS = {"StorCtl_Mod", "OutWRte", "InWRte"}
STATE_CONNECTED, STATE_STANDBY, STATE_DISCONNECTED = 3, 4, 1


class BatteryDevice(SunSpecDevice):
    kind = "battery"
    POINT_OF_METRIC: ClassVar[dict[str, tuple[int, str]]] = {
        "active_power_w": (802, "W"),
        "dc_voltage_v": (802, "V"),
        "dc_current_a": (802, "A"),
        "soc_pct": (802, "SoC"),
        "soh_pct": (802, "SoH"),
        "energy_capacity_wh": (802, "WHRtg"),
        "charge_limit_w": (124, "WChaMax"),
        "discharge_limit_w": (802, "WDisChaRteMax"),
        "active_power_setpoint_w": (802, "ReqW"),
        "operating_state": (802, "State"),
        "rated_power_w": (120, "WRtg"),
    }

    def __init__(
        self,
        key: str,
        clock: SimClock,
        params: BatteryParams,
        *,
        rated_w: float,
        unit_id: int = 1,
        vendor: str | None = None,
        model_name: str | None = None,
    ) -> None:
        super().__init__(key, clock, unit_id, vendor, model_name)
        self.physics = BatteryPhysics(params)
        self._rates_written_at: datetime | None = None
        p = params
        ss = self.sunspec
        max_w = max(p.max_charge_w, p.max_discharge_w, rated_w)
        w_sf = pick_scale_factor(max_w * 1.2, signed=True, finest=0)
        wh_sf = pick_scale_factor(p.capacity_wh, signed=False, finest=0)
        ah = p.capacity_wh / p.nominal_dc_v

        ss.add_model(120)
        ss.set_raw(120, "DERTyp", 82)  # PV_STOR: the storage type model 120 knows
        for name, sf in (
            ("WRtg_SF", w_sf),
            ("VARtg_SF", w_sf),
            ("WHRtg_SF", wh_sf),
            ("MaxChaRte_SF", w_sf),
            ("MaxDisChaRte_SF", w_sf),
            ("AhrRtg_SF", pick_scale_factor(ah, False, 0)),
        ):
            ss.set_sf(120, name, sf)
        ss.set(120, "WRtg", rated_w)
        ss.set(120, "VARtg", rated_w)
        ss.set(120, "WHRtg", p.capacity_wh)
        ss.set(120, "AhrRtg", ah)
        ss.set(120, "MaxChaRte", p.max_charge_w)
        ss.set(120, "MaxDisChaRte", p.max_discharge_w)

        ss.add_model(124)
        for name, sf in (
            ("WChaMax_SF", w_sf),
            ("WChaDisChaGra_SF", 0),
            ("MinRsvPct_SF", -1),
            ("ChaState_SF", -1),
            ("StorAval_SF", pick_scale_factor(ah, False, -1)),
            ("InBatV_SF", -1),
            ("InOutWRte_SF", 0),
        ):
            ss.set_sf(124, name, sf)
        ss.set(124, "WChaMax", p.max_charge_w)
        ss.set(124, "WChaGra", 100.0)
        ss.set(124, "WDisChaGra", 100.0)
        ss.set_raw(124, "StorCtl_Mod", 0)
        ss.set(124, "MinRsvPct", 0.0)
        ss.set(124, "OutWRte", 0.0)
        ss.set(124, "InWRte", 0.0)
        for name in ("InOutWRte_WinTms", "InOutWRte_RvrtTms", "InOutWRte_RmpTms"):
            ss.set_raw(124, name, 0)
            ss.writable(124, name)
        ss.set_raw(124, "ChaGriSet", 1)  # GRID
        ss.writable(124, "WChaMax", 0, p.max_charge_w)
        ss.writable(124, "StorCtl_Mod", allowed=(0, 1, 2, 3))
        ss.writable(124, "MinRsvPct", 0, 100)
        ss.writable(124, "OutWRte", -100, 100)
        ss.writable(124, "InWRte", -100, 100)
        ss.writable(124, "ChaGriSet", allowed=(0, 1))

        ss.add_model(802)
        for name, sf in (
            ("AHRtg_SF", pick_scale_factor(ah, False, 0)),
            ("WHRtg_SF", wh_sf),
            ("WChaDisChaMax_SF", w_sf),
            ("DisChaRte_SF", -2),
            ("SoC_SF", -1),
            ("DoD_SF", -1),
            ("SoH_SF", -1),
            ("V_SF", pick_scale_factor(p.nominal_dc_v * 1.3, False, -1)),
            ("CellV_SF", -3),
            ("A_SF", pick_scale_factor(max_w / p.nominal_dc_v * 1.3, True, -1)),
            ("AMax_SF", pick_scale_factor(max_w / p.nominal_dc_v * 1.3, False, -1)),
            ("W_SF", w_sf),
        ):
            ss.set_sf(802, name, sf)
        ss.set(802, "AHRtg", ah)
        ss.set(802, "WHRtg", p.capacity_wh)
        ss.set(802, "WChaRteMax", p.max_charge_w)
        ss.set(802, "WDisChaRteMax", p.max_discharge_w)
        ss.set(802, "DisChaRte", 0.05)
        ss.set(802, "SoCMax", p.soc_max_pct)
        ss.set(802, "SoCMin", p.soc_min_pct)
        ss.set(802, "SocRsvMax", 100.0)
        ss.set(802, "SoCRsvMin", 0.0)
        ss.set(802, "SoH", p.soh_pct)
        ss.set_raw(802, "LocRemCtl", 0)  # REMOTE
        ss.set_raw(802, "Typ", 4)  # LITHIUM_ION
        ss.set(802, "VMax", p.nominal_dc_v * 1.08)
        ss.set(802, "VMin", p.nominal_dc_v * 0.88)
        ss.set(802, "AChaMax", p.max_charge_w / p.nominal_dc_v * 1.1)
        ss.set(802, "ADisChaMax", p.max_discharge_w / p.nominal_dc_v * 1.1)
        ss.set_raw(802, "CtrlHb", 0)
        ss.set_raw(802, "AlmRst", 0)
        ss.set_raw(802, "SetOp", 1)  # CONNECT
        ss.set_raw(802, "SetInvState", 3)  # INVERTER_STARTED
        ss.set_raw(802, "Evt1", 0)
        ss.set_raw(802, "Evt2", 0)
        ss.writable(802, "SocRsvMax", 0, 100)
        ss.writable(802, "SoCRsvMin", 0, 100)
        ss.writable(802, "CtrlHb")
        ss.writable(802, "AlmRst")
        ss.writable(802, "SetOp", allowed=(1, 2))
        ss.writable(802, "SetInvState", allowed=(1, 2, 3))
        ss.end()

    def _on_write(self, rules: list[WriteRule], now: datetime) -> None:
        if {r.name.rsplit(".", 1)[-1] for r in rules} & _RATE_POINTS:
            self._rates_written_at = now

    def _load_controls(self, now: datetime) -> None:
        ss, c = self.sunspec, self.physics.control
        timeout = ss.get_raw(124, "InOutWRte_RvrtTms")
        if (
            self._rates_written_at
            and isinstance(timeout, int)
            and timeout > 0
            and (now - self._rates_written_at).total_seconds() >= timeout
        ):
            ss.set_raw(124, "StorCtl_Mod", 0)  # the controller went quiet: back to local operation
            self._rates_written_at = None
        mode = ss.get_raw(124, "StorCtl_Mod")
        bits = mode if isinstance(mode, int) else 0
        c.charge_enabled = bool(bits & 1)
        c.discharge_enabled = bool(bits & 2)
        c.out_pct = ss.get(124, "OutWRte") or 0.0
        c.in_pct = ss.get(124, "InWRte") or 0.0
        c.wcha_max_w = ss.get(124, "WChaMax") or 0.0
        c.reserve_min_pct = max(ss.get(124, "MinRsvPct") or 0.0, ss.get(802, "SoCRsvMin") or 0.0)
        c.reserve_max_pct = ss.get(802, "SocRsvMax") or 100.0
        c.connected = ss.get_raw(802, "SetOp") != 2

    def _step(self, now: datetime, dt_s: float) -> None:
        self.physics.step(now, dt_s)

    def _refresh(self) -> None:
        ss, ph = self.sunspec, self.physics
        cap = ph.p.capacity_wh
        ss.set(124, "ChaState", ph.soc_pct)
        ss.set(124, "StorAval", max(0.0, ph.soc_pct - ph.soc_floor_pct) / 100.0 * cap / ph.p.nominal_dc_v)
        ss.set(124, "InBatV", ph.dc_voltage_v)
        ss.set_raw(124, "ChaSt", ph.charge_status)
        ss.set(802, "SoC", ph.soc_pct)
        ss.set(802, "DoD", 100.0 - ph.soc_pct)
        ss.set_raw(802, "NCyc", ph.cycles)
        ss.set_raw(802, "ChaSt", ph.charge_status)
        hb = ss.get_raw(802, "Hb")
        ss.set_raw(802, "Hb", ((hb if isinstance(hb, int) else 0) + 1) % 65535)
        ss.set_raw(802, "State", self._state())
        ss.set(802, "V", ph.dc_voltage_v)
        ss.set(802, "CellVMax", ph.cell_voltage_v * 1.004)
        ss.set(802, "CellVMin", ph.cell_voltage_v * 0.996)
        ss.set(802, "CellVAvg", ph.cell_voltage_v)
        ss.set(802, "A", ph.dc_current_a)
        ss.set(802, "W", ph.power_w)
        ss.set(802, "ReqW", ph.setpoint_w)

    def _state(self) -> int:
        ph = self.physics
        if not ph.control.connected:
            return STATE_DISCONNECTED
        return STATE_CONNECTED if ph.power_w else STATE_STANDBY

    def metrics(self) -> dict[str, float]:
        ph = self.physics
        return {
            "active_power_w": ph.power_w,
            "dc_voltage_v": ph.dc_voltage_v,
            "dc_current_a": ph.dc_current_a,
            "soc_pct": ph.soc_pct,
            "soh_pct": ph.p.soh_pct,
            "energy_capacity_wh": ph.p.capacity_wh,
            "charge_limit_w": ph.charge_limit_w,
            "discharge_limit_w": ph.discharge_limit_w,
            "active_power_setpoint_w": ph.setpoint_w,
            "operating_state": float(self._state()),  # 802 State
            "rated_power_w": float(self.sunspec.get(120, "WRtg") or 0.0),
        }
