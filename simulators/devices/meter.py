"""Three-phase meter served as SunSpec models 1 and 203 (wye-connected, ABCN). W > 0 is import."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.devices.sunspec_device import SunSpecDevice
from simulators.physics.meter import MeterParams, MeterPhysics
from simulators.registers import pick_scale_factor

# What the meter sees of another device's active power: loads draw (+), generation and discharge feed (-).
_SIGN_SEEN_BY_METER = {"load": 1.0, "meter": 0.0, "pv_inverter": -1.0, "battery": -1.0, "hydro": -1.0}


class MeterDevice(SunSpecDevice):
    kind = "meter"
    POINT_OF_METRIC: ClassVar[dict[str, tuple[int, str]]] = {
        "active_power_w": (203, "W"),
        "reactive_power_var": (203, "VAR"),
        "apparent_power_va": (203, "VA"),
        "power_factor": (203, "PF"),
        "voltage_v": (203, "PhV"),
        "voltage_l1_v": (203, "PhVphA"),
        "voltage_l2_v": (203, "PhVphB"),
        "voltage_l3_v": (203, "PhVphC"),
        "current_a": (203, "A"),
        "frequency_hz": (203, "Hz"),
        "energy_import_wh": (203, "TotWhImp"),
        "energy_export_wh": (203, "TotWhExp"),
    }

    def __init__(
        self,
        key: str,
        clock: SimClock,
        params: MeterParams,
        *,
        rated_w: float,
        unit_id: int = 1,
        vendor: str | None = None,
        model_name: str | None = None,
    ) -> None:
        super().__init__(key, clock, unit_id, vendor, model_name)
        self.physics = MeterPhysics(params)
        self.downstream: Sequence[SimDevice] = ()  # devices behind this meter, set by the fleet builder
        ss = self.sunspec
        ss.add_model(203)
        w_sf = pick_scale_factor(rated_w * 1.5, signed=True, finest=0)
        v = params.nominal_v
        for name, sf in (
            ("A_SF", pick_scale_factor(rated_w * 1.5 / v, signed=True, finest=-2)),
            ("V_SF", pick_scale_factor(v * math.sqrt(3) * 1.2, signed=True, finest=-1)),
            ("Hz_SF", -2),
            ("W_SF", w_sf),
            ("VA_SF", w_sf),
            ("VAR_SF", w_sf),
            ("PF_SF", -1),
            ("TotWh_SF", pick_scale_factor(rated_w * 8760, signed=False, finest=0, registers=2)),
        ):
            ss.set_sf(203, name, sf)
        for name in (
            "TotWhExpPhA",
            "TotWhExpPhB",
            "TotWhExpPhC",
            "TotWhImpPhA",
            "TotWhImpPhB",
            "TotWhImpPhC",
        ):
            ss.set_raw(203, name, 0)  # acc32 0 = not accumulated per phase
        ss.set_raw(203, "Evt", 0)
        ss.end()

    def _load_controls(self, now: datetime) -> None:
        pass  # a meter has nothing to control

    def _external_w(self, now: datetime) -> float:
        total = 0.0
        for d in self.downstream:
            d.sync(now)
            total += _SIGN_SEEN_BY_METER.get(d.kind, 0.0) * d.metrics()["active_power_w"]
        return total

    def _step(self, now: datetime, dt_s: float) -> None:
        self.physics.step(now, dt_s, self._external_w(now))

    def _refresh(self) -> None:
        ss, ph = self.sunspec, self.physics
        v = ph.phase_voltages_v
        a = ph.phase_currents_a
        w = ph.phase_powers_w
        ss.set(203, "A", sum(a))
        ss.set(203, "PhV", sum(v) / 3)
        ss.set(203, "PPV", sum(v) / 3 * math.sqrt(3))
        for i, ph_name in enumerate("ABC"):
            ss.set(203, f"Aph{ph_name}", a[i])
            ss.set(203, f"PhVph{ph_name}", v[i])
            ss.set(203, f"Wph{ph_name}", w[i])
            ss.set(203, f"VAph{ph_name}", abs(w[i]) / ph.p.power_factor)
            ss.set(203, f"VARph{ph_name}", ph.reactive_power_var / 3)
            ss.set(203, f"PFph{ph_name}", ph.p.power_factor * 100.0)
        for name, (x, y) in zip(("PhVphAB", "PhVphBC", "PhVphCA"), ((0, 1), (1, 2), (2, 0)), strict=True):
            ss.set(203, name, (v[x] + v[y]) / 2 * math.sqrt(3))
        ss.set(203, "Hz", ph.frequency_hz)
        ss.set(203, "W", ph.power_w)
        ss.set(203, "VA", ph.apparent_power_va)
        ss.set(203, "VAR", ph.reactive_power_var)
        ss.set(203, "PF", ph.p.power_factor * 100.0)  # percent, per the model's units
        ss.set(203, "TotWhExp", ph.energy_export_wh)
        ss.set(203, "TotWhImp", ph.energy_import_wh)

    def metrics(self) -> dict[str, float]:
        ph = self.physics
        v = ph.phase_voltages_v
        return {
            "active_power_w": ph.power_w,
            "reactive_power_var": ph.reactive_power_var,
            "apparent_power_va": ph.apparent_power_va,
            "power_factor": ph.p.power_factor,
            "voltage_v": sum(v) / 3,
            "voltage_l1_v": v[0],
            "voltage_l2_v": v[1],
            "voltage_l3_v": v[2],
            "current_a": sum(ph.phase_currents_a),
            "frequency_hz": ph.frequency_hz,
            "energy_import_wh": ph.energy_import_wh,
            "energy_export_wh": ph.energy_export_wh,
        }
