"""The metric catalogue: every number Lishui stores has one canonical name, unit and sign convention.

Modbus register maps and OCPP measurands are both mapped onto these names, so a chart, a baseline or a
settlement never cares where a number came from. Ids are stable: the telemetry table stores the id,
so an id is never reused or renumbered; new metrics are appended.

Sign convention for power and energy (the one SunSpec uses):
- generators and storage (PV, hydro, batteries): ``active_power_w`` > 0 is output (generation,
  discharge), < 0 is charging;
- meters, loads and chargers: ``active_power_w`` > 0 is consumption (import from the grid), < 0 export.

Demand-response amounts of a flexible load are >= 0, each in its own direction, against the load's
baseline (its production profile had nobody commanded it): ``curtailment_w`` is held back (less import),
``load_raise_w`` taken on (more import, valley filling), so ``active_power_w`` = baseline −
``curtailment_w`` + ``load_raise_w``; ``max_curtailable_w`` and ``max_raisable_w`` are the device's own
limits on the two setpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricKind(StrEnum):
    GAUGE = "gauge"  # an instantaneous value: aggregate by avg/min/max
    COUNTER = "counter"  # a monotonically increasing register: aggregate by last, difference for energy
    STATE = "state"  # an enumerated code: aggregate by last


@dataclass(frozen=True, slots=True)
class Metric:
    id: int
    name: str
    unit: str
    kind: MetricKind
    description: str


_G, _C, _S = MetricKind.GAUGE, MetricKind.COUNTER, MetricKind.STATE

CATALOGUE: tuple[Metric, ...] = (
    Metric(
        1,
        "active_power_w",
        "W",
        _G,
        "Active power; + output for generators/storage, + import for meters/loads",
    ),
    Metric(
        2,
        "reactive_power_var",
        "var",
        _G,
        "Reactive power; + when supplying (capacitive), same side as active",
    ),
    Metric(3, "apparent_power_va", "VA", _G, "Apparent power"),
    Metric(4, "power_factor", "1", _G, "Power factor, -1..1"),
    Metric(5, "voltage_v", "V", _G, "Phase-to-neutral voltage, average of phases"),
    Metric(6, "voltage_l1_v", "V", _G, "Phase A (L1) to neutral voltage"),
    Metric(7, "voltage_l2_v", "V", _G, "Phase B (L2) to neutral voltage"),
    Metric(8, "voltage_l3_v", "V", _G, "Phase C (L3) to neutral voltage"),
    Metric(9, "current_a", "A", _G, "AC current, sum of phases"),
    Metric(10, "frequency_hz", "Hz", _G, "Grid frequency"),
    Metric(
        11,
        "energy_export_wh",
        "Wh",
        _C,
        "Energy delivered (generation, discharge or export), lifetime register",
    ),
    Metric(
        12,
        "energy_import_wh",
        "Wh",
        _C,
        "Energy received (consumption, charging or import), lifetime register",
    ),
    Metric(13, "dc_power_w", "W", _G, "DC-side power (PV array or battery)"),
    Metric(14, "dc_voltage_v", "V", _G, "DC-side voltage"),
    Metric(15, "dc_current_a", "A", _G, "DC-side current"),
    Metric(16, "temperature_c", "°C", _G, "Device (cabinet/heat-sink/connector) temperature"),
    Metric(17, "soc_pct", "%", _G, "State of charge"),
    Metric(18, "soh_pct", "%", _G, "State of health"),
    Metric(19, "operating_state", "1", _S, "Device operating state code (vendor or SunSpec enumeration)"),
    Metric(20, "active_power_limit_pct", "%", _G, "Active power limit in force, % of rated power"),
    Metric(21, "active_power_setpoint_w", "W", _G, "Active power setpoint in force"),
    Metric(22, "rated_power_w", "W", _G, "Nameplate active power rating"),
    Metric(23, "charge_limit_w", "W", _G, "Maximum charge power in force"),
    Metric(24, "discharge_limit_w", "W", _G, "Maximum discharge power in force"),
    Metric(25, "energy_capacity_wh", "Wh", _G, "Usable energy capacity"),
    Metric(26, "reservoir_level_m", "m", _G, "Reservoir (forebay) water level above the intake sill"),
    Metric(27, "inflow_m3s", "m³/s", _G, "Natural inflow to the reservoir"),
    Metric(28, "gate_opening_pct", "%", _G, "Turbine guide-vane / gate opening"),
    Metric(29, "curtailment_w", "W", _G, "Load curtailment in force (power held back from the baseline)"),
    Metric(30, "irradiance_wm2", "W/m²", _G, "Plane-of-array irradiance"),
    Metric(31, "power_offered_w", "W", _G, "Charging power offered to the EV (OCPP Power.Offered)"),
    Metric(32, "current_offered_a", "A", _G, "Charging current offered to the EV (OCPP Current.Offered)"),
    Metric(33, "charging_limit_w", "W", _G, "Charging limit in force from smart charging"),
    Metric(34, "discharge_flow_m3s", "m³/s", _G, "Water flow through the turbine"),
    Metric(35, "load_raise_w", "W", _G, "Load raise in force (power taken on above the baseline), >= 0"),
    Metric(36, "max_raisable_w", "W", _G, "Most power a flexible load can take on above its baseline, >= 0"),
    Metric(
        37, "max_curtailable_w", "W", _G, "Most power a flexible load can hold back from its baseline, >= 0"
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}
BY_ID: dict[int, Metric] = {m.id: m for m in CATALOGUE}


def metric(name: str) -> Metric:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; the catalogue is core.metrics.CATALOGUE") from None
