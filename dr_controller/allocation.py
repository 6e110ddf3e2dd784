"""Share a demand-response target among resources: least cost, tier by tier, within every limit.

The policy, in order of precedence:

1. tier-free resources (hydro up-regulation, storage) are used before any user is curtailed;
2. then flexible loads and EV charging by tier, 9 first, down to 1; tier 0 is never touched;
3. within one priority class, least cost (¥/kWh) first;
4. every resource stays within its bounds (physical and energy limits, ramp from its current dispatch).

Each control step is a single-period problem with only per-resource bounds, so the tier order is met
exactly without big cost multipliers: the quota of each priority class is fixed first (fill classes in
order until the target is met), then one LP minimises cost with one equality row per class. That keeps
the LP numerically clean (costs stay in ¥) and solves 10,000 resources in milliseconds. If constraints
coupling resources across classes are added later (feeder caps, multi-interval SoC), the quotas must
become a lexicographic sequence of solves instead.

The merit-order fallback (greedy by class, then cost, then input position) is optimal for the same
problem, so LP and fallback deliver the same total and the same cost; they may split ties differently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from core.dr.resources import Flexibility
from core.dr.target import Target

__all__ = [
    "Allocation",
    "FlexibilityTable",
    "Method",
    "allocate",
    "allocate_lp",
    "allocate_merit_order",
    "priority_rank",
]

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

TIER_FREE_RANK = 0
PROTECTED_RANK = 10  # tier 0: bounds are forced to zero, the rank only sorts it last


def priority_rank(tier: int | None) -> int:
    """Lower rank is used first: tier-free, then tier 9, 8, ... 1; tier 0 last (and never used)."""
    if tier is None:
        return TIER_FREE_RANK
    return PROTECTED_RANK if tier == 0 else 10 - tier


class Method(StrEnum):
    LP = "lp"
    MERIT_ORDER = "merit_order"


@dataclass(frozen=True, slots=True)
class FlexibilityTable:
    """The allocator's input as arrays, one entry per resource (build once, solve many times)."""

    resource_ids: tuple[str, ...]
    rank: IntArray
    cost: FloatArray
    lower: FloatArray
    upper: FloatArray

    def __post_init__(self) -> None:
        n = len(self.resource_ids)
        if not all(len(a) == n for a in (self.rank, self.cost, self.lower, self.upper)):
            raise ValueError("all columns of a flexibility table must have one entry per resource")
        if n and (
            np.any(self.lower < 0) or np.any(self.upper < self.lower) or not np.all(np.isfinite(self.upper))
        ):
            raise ValueError("bounds must satisfy 0 <= lower <= upper < inf")

    def __len__(self) -> int:
        return len(self.resource_ids)

    @classmethod
    def from_flexibilities(cls, flexibilities: Sequence[Flexibility]) -> FlexibilityTable:
        bounds = np.array([f.bounds_kw for f in flexibilities], dtype=np.float64).reshape(-1, 2)
        return cls(
            resource_ids=tuple(f.resource_id for f in flexibilities),
            rank=np.array([priority_rank(f.tier) for f in flexibilities], dtype=np.int64),
            cost=np.array([f.cost_per_kwh for f in flexibilities], dtype=np.float64),
            lower=bounds[:, 0].copy(),
            upper=bounds[:, 1].copy(),
        )

    def class_quotas(self, target_kw: float) -> tuple[IntArray, FloatArray, float]:
        """(ranks present, kW each class must give, shortfall): classes filled in rank order."""
        ranks, inverse = np.unique(self.rank, return_inverse=True)
        floor_kw = np.bincount(inverse, weights=self.lower, minlength=len(ranks)).astype(np.float64)
        room_kw = np.bincount(inverse, weights=self.upper - self.lower, minlength=len(ranks))
        need = max(0.0, target_kw - float(floor_kw.sum()))
        quotas = floor_kw.copy()
        for k in range(len(ranks)):
            take = min(float(room_kw[k]), need)
            quotas[k] += take
            need -= take
        return ranks, quotas, need


@dataclass(frozen=True, slots=True)
class Allocation:
    target: Target
    resource_ids: tuple[str, ...]
    dispatch_kw: FloatArray
    method: Method
    solve_s: float
    # Why the LP was not used, when the fallback was.
    fallback_reason: str | None = None

    @property
    def delivered_kw(self) -> float:
        return float(self.dispatch_kw.sum())

    @property
    def shortfall_kw(self) -> float:
        return max(0.0, self.target.amount_kw - self.delivered_kw)

    def cost_per_h(self, table: FlexibilityTable) -> float:
        return float(self.dispatch_kw @ table.cost)

    def by_resource(self, *, nonzero_only: bool = True) -> dict[str, float]:
        return {
            rid: float(kw)
            for rid, kw in zip(self.resource_ids, self.dispatch_kw, strict=True)
            if kw > 0 or not nonzero_only
        }


def allocate_merit_order(table: FlexibilityTable, target: Target) -> Allocation:
    """Greedy: forced minimums first, then by priority class, cost and input position."""
    started = time.perf_counter()
    dispatch = table.lower.copy()
    need = target.amount_kw - float(dispatch.sum())
    if need > 0 and len(table):
        order = np.lexsort((np.arange(len(table)), table.cost, table.rank))
        room = (table.upper - table.lower)[order]
        before = np.cumsum(room) - room  # what the resources ahead in merit order can give
        dispatch[order] += np.clip(need - before, 0.0, room)
    return Allocation(target, table.resource_ids, dispatch, Method.MERIT_ORDER, time.perf_counter() - started)


class SolverError(RuntimeError):
    pass


def allocate_lp(table: FlexibilityTable, target: Target, *, time_limit_s: float = 5.0) -> Allocation:
    """Least cost within fixed class quotas, solved by HiGHS; raises SolverError if it has no optimum."""
    started = time.perf_counter()
    n = len(table)
    ranks, quotas, _shortfall = table.class_quotas(target.amount_kw)
    if n == 0:
        return Allocation(target, table.resource_ids, np.zeros(0), Method.LP, time.perf_counter() - started)
    try:
        import highspy
    except ImportError as err:  # an optional speed-up, never a hard dependency of dispatch
        raise SolverError(f"highspy unavailable: {err}") from err

    row_of = np.searchsorted(ranks, table.rank)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = len(ranks)
    lp.col_cost_ = table.cost
    lp.col_lower_ = table.lower
    lp.col_upper_ = table.upper
    lp.row_lower_ = quotas
    lp.row_upper_ = quotas
    # Column-wise: resource i has a single 1 in the row of its priority class.
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.arange(n + 1, dtype=np.int32)
    lp.a_matrix_.index_ = row_of.astype(np.int32)
    lp.a_matrix_.value_ = np.ones(n)

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", time_limit_s)
    h.setOptionValue("random_seed", 0)
    if h.passModel(lp) != highspy.HighsStatus.kOk:
        raise SolverError("HiGHS rejected the model")
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise SolverError(f"HiGHS: {h.modelStatusToString(status)}")
    # Within the solver's feasibility tolerance of the bounds; clip so limits hold exactly.
    dispatch = np.clip(np.asarray(h.getSolution().col_value, dtype=np.float64), table.lower, table.upper)
    return Allocation(target, table.resource_ids, dispatch, Method.LP, time.perf_counter() - started)


def allocate(table: FlexibilityTable, target: Target) -> Allocation:
    """The LP, or the merit order if the solver is unavailable or fails (the reason is kept)."""
    try:
        return allocate_lp(table, target)
    except Exception as err:  # any solver failure must still leave the grid a dispatch
        log.warning("LP allocation failed, using the merit order", extra={"reason": str(err)})
        fallback = allocate_merit_order(table, target)
        return Allocation(
            target, fallback.resource_ids, fallback.dispatch_kw, fallback.method, fallback.solve_s, str(err)
        )
