"""The 15-minute settlement report: delivered against target per interval, and per resource.

Delivered response is measured, never taken from the commands: per resource and interval it is the
baseline minus the measurement for loads (+ import), and the measurement minus the baseline for
generators and storage (+ output), in the event's direction (``core.metrics`` sign conventions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from core.dr.resources import Direction

__all__ = ["IntervalResult", "ResourcePerformance", "ResourceSeries", "SettlementReport", "settle"]

FloatArray = NDArray[np.float64]
SLOT_H = 0.25


@dataclass(frozen=True, slots=True)
class ResourceSeries:
    baseline_kw: Sequence[float]
    measured_kw: Sequence[float]
    produces: bool  # generator or storage: + output; otherwise a load: + import
    committed_kw: Sequence[float] | None = None  # what it was dispatched to give, per interval


@dataclass(frozen=True, slots=True)
class IntervalResult:
    index: int
    target_kw: float
    delivered_kw: float

    @property
    def performance(self) -> float:
        return self.delivered_kw / self.target_kw if self.target_kw > 0 else float("nan")


@dataclass(frozen=True, slots=True)
class ResourcePerformance:
    resource_id: str
    delivered_kwh: float
    committed_kwh: float | None
    performance: float | None  # delivered over committed energy


@dataclass(frozen=True, slots=True)
class SettlementReport:
    intervals: tuple[IntervalResult, ...]
    resources: tuple[ResourcePerformance, ...]
    delivered_kwh: float
    target_kwh: float

    def intervals_below(self, share: float, skip_first: int = 1) -> list[int]:
        """Intervals (after the first ``skip_first``, the ramp-in) delivering under ``share`` of target."""
        return [r.index for r in self.intervals[skip_first:] if r.delivered_kw < share * r.target_kw]


def _response(series: ResourceSeries, direction: Direction) -> FloatArray:
    baseline = np.asarray(series.baseline_kw, dtype=np.float64)
    measured = np.asarray(series.measured_kw, dtype=np.float64)
    if baseline.shape != measured.shape:
        raise ValueError("baseline and measurement need one value per interval each")
    grid_drop = (measured - baseline) if series.produces else (baseline - measured)
    return grid_drop if direction is Direction.REDUCE else -grid_drop


def settle(
    direction: Direction, target_kw: Sequence[float], resources: Mapping[str, ResourceSeries]
) -> SettlementReport:
    """Settle one event; every series has one value (average kW) per 15-minute interval of the event."""
    target = np.asarray(target_kw, dtype=np.float64)
    total = np.zeros_like(target)
    performances = []
    for rid in sorted(resources):
        series = resources[rid]
        response = _response(series, direction)
        if response.shape != target.shape:
            raise ValueError(f"{rid}: {response.size} intervals, the event has {target.size}")
        total += response
        committed = None if series.committed_kw is None else float(np.sum(series.committed_kw)) * SLOT_H
        delivered = float(response.sum()) * SLOT_H
        ratio = delivered / committed if committed else None
        performances.append(ResourcePerformance(rid, delivered, committed, ratio))
    intervals = tuple(
        IntervalResult(i, float(t), float(d)) for i, (t, d) in enumerate(zip(target, total, strict=True))
    )
    return SettlementReport(
        intervals, tuple(performances), float(total.sum()) * SLOT_H, float(target.sum()) * SLOT_H
    )
