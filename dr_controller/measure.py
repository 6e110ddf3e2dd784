"""The delivered response of an event now, from live telemetry against the event's references.

Per resource (``core.metrics`` signs): a load delivers its reference (baseline) minus what it draws; a
generator or storage delivers what it gives minus its operating point at activation. The loads'
aggregate is measured against the program's baseline when one could be computed from history, else
against the sum of their meter-before references. Valley filling counts the other way round.
A resource with no fresh reading counts as delivering nothing (its reference stands for its measurement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.dr.resources import Direction

__all__ = ["Measurement", "measure"]


@dataclass(frozen=True, slots=True)
class Measurement:
    delivered_kw: float
    load_baseline_kw: float  # what the loads would draw without the event
    load_measured_kw: float
    producer_reference_kw: float
    producer_measured_kw: float
    per_resource_kw: dict[str, float]  # resource id -> measured kW

    @property
    def net_baseline_kw(self) -> float:
        """The scope's net load had there been no event (loads minus generation and discharge)."""
        return self.load_baseline_kw - self.producer_reference_kw


def measure(
    direction: Direction,
    references: Mapping[str, tuple[bool, float]],  # resource id -> (produces, reference kW)
    measured: Mapping[str, float],  # resource id -> kW now, for those with a fresh reading
    program_load_baseline_kw: float | None = None,
) -> Measurement:
    load_ref = load_now = prod_ref = prod_now = 0.0
    per_resource: dict[str, float] = {}
    for rid, (produces, reference) in references.items():
        now = measured.get(rid, reference)
        per_resource[rid] = now
        if produces:
            prod_ref += reference
            prod_now += now
        else:
            load_ref += reference
            load_now += now
    load_baseline = load_ref if program_load_baseline_kw is None else program_load_baseline_kw
    grid_drop = (load_baseline - load_now) + (prod_now - prod_ref)
    delivered = grid_drop if direction is Direction.REDUCE else -grid_drop
    return Measurement(delivered, load_baseline, load_now, prod_ref, prod_now, per_resource)
