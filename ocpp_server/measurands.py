"""OCPP meter values -> catalogue metrics (version-free).

Both versions' sampled values are accepted in the library's snake_case form: 1.6 carries ``value`` as a
string and ``unit``; 2.0.1 a number and ``unit_of_measure: {unit, multiplier}``. Values are converted to
the catalogue unit (kW -> W, kWh -> Wh, multipliers 10^n, K/Fahrenheit -> °C).

Within one sample: a value without a phase wins; otherwise phases are summed for additive measurands
(power, current, energy) and averaged (phase to neutral) for voltage. The outlet is preferred over the
inlet; EV-side values are used only for SoC. Across a pile's connectors (``PileMeter``): additive metrics
are the sum of each connector's latest value (a connector-0 main-meter register wins for energy),
voltage the mean, temperature the maximum, SoC the latest reported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MEASURANDS: dict[str, str] = {
    "Energy.Active.Import.Register": "energy_import_wh",
    "Power.Active.Import": "active_power_w",
    "Current.Import": "current_a",
    "Voltage": "voltage_v",
    "SoC": "soc_pct",
    "Power.Offered": "power_offered_w",
    "Current.Offered": "current_offered_a",
    "Temperature": "temperature_c",
}
ADDITIVE = frozenset(
    {"energy_import_wh", "active_power_w", "current_a", "power_offered_w", "current_offered_a"}
)
DEFAULT_MEASURAND = "Energy.Active.Import.Register"
_SCALE = {"kW": 1000.0, "kWh": 1000.0, "kvar": 1000.0, "kVA": 1000.0, "kvarh": 1000.0}
_LOCATION_RANK = {"Outlet": 0, None: 0, "Body": 1, "Cable": 1, "Inlet": 2, "EV": 3}
_NEUTRAL_PHASES = {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"}


def parse_ts(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"timestamp without timezone: {text!r}")
    return ts


def _value(sv: Mapping[str, Any]) -> float | None:
    try:
        value = float(sv["value"])
    except (KeyError, TypeError, ValueError):
        return None
    uom = sv.get("unit_of_measure")
    unit = uom.get("unit") if isinstance(uom, Mapping) else sv.get("unit")
    if isinstance(uom, Mapping) and uom.get("multiplier") is not None:
        value *= 10.0 ** int(uom["multiplier"])
    if unit in _SCALE:
        value *= _SCALE[unit]
    elif unit == "K":
        value -= 273.15
    elif unit == "Fahrenheit":
        value = (value - 32.0) * 5.0 / 9.0
    return value if math.isfinite(value) else None


def sample_metrics(sampled_values: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """One meterValue's sampled values -> {metric: value}."""
    # metric -> location rank -> phase (None = total) -> value
    found: dict[str, dict[int, dict[str | None, float]]] = defaultdict(lambda: defaultdict(dict))
    for sv in sampled_values:
        metric = MEASURANDS.get(sv.get("measurand") or DEFAULT_MEASURAND)
        if metric is None:
            continue
        location = sv.get("location")
        rank = _LOCATION_RANK.get(location, 1)
        if location == "EV" and metric != "soc_pct":
            continue
        value = _value(sv)
        if value is None:
            continue
        found[metric][rank][sv.get("phase")] = value
    out: dict[str, float] = {}
    for metric, by_rank in found.items():
        phases = by_rank[min(by_rank)]
        if None in phases:
            out[metric] = phases[None]
        elif metric == "voltage_v":
            neutral = [v for p, v in phases.items() if p in _NEUTRAL_PHASES]
            values = neutral or list(phases.values())
            out[metric] = sum(values) / len(values)
        elif metric in ADDITIVE:
            out[metric] = sum(v for p, v in phases.items() if p != "N")
        elif metric == "temperature_c":
            out[metric] = max(phases.values())
        else:
            out[metric] = next(iter(phases.values()))
    return out


@dataclass
class PileMeter:
    """The latest metrics of each connector/EVSE of a pile, folded into pile-level values."""

    latest: dict[int, dict[str, float]] = field(default_factory=dict)

    def update(self, connector: int, metrics: Mapping[str, float]) -> dict[str, float]:
        self.latest.setdefault(connector, {}).update(metrics)
        out: dict[str, float] = {}
        for metric in metrics:
            values = [
                m[metric] for c, m in self.latest.items() if metric in m and (c != 0 or len(self.latest) == 1)
            ]
            if metric == "energy_import_wh" and 0 in self.latest and metric in self.latest[0]:
                out[metric] = self.latest[0][metric]
            elif not values:
                out[metric] = metrics[metric]
            elif metric in ADDITIVE:
                out[metric] = sum(values)
            elif metric == "voltage_v":
                out[metric] = sum(values) / len(values)
            elif metric == "temperature_c":
                out[metric] = max(values)
            else:
                out[metric] = metrics[metric]
        return out
