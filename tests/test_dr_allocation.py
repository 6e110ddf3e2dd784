"""Allocation: tier order, limits, target, shortfall, LP against merit order (hypothesis for invariants)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.dr.resources import Direction, Flexibility, ResourceKind
from core.dr.target import Target
from dr_controller import allocation
from dr_controller.allocation import (
    Allocation,
    FlexibilityTable,
    Method,
    allocate,
    allocate_lp,
    allocate_merit_order,
    priority_rank,
)

LOAD, STORE = ResourceKind.FLEXIBLE_LOAD, ResourceKind.STORAGE


def flex(rid: str, tier: int | None, cost: float, kw: float, **kw_args: float) -> Flexibility:
    return Flexibility(rid, STORE if tier is None else LOAD, tier, cost, kw, **kw_args)


def test_tier_free_first_then_tier_nine_down_and_cheapest_within_a_tier() -> None:
    table = FlexibilityTable.from_flexibilities(
        [
            flex("hospital", 0, 0.01, 5000),
            flex("t3", 3, 0.1, 1000),
            flex("t9-dear", 9, 5.0, 300),
            flex("t9-cheap", 9, 0.5, 200),
            flex("bess", None, 9.0, 400),
        ]
    )
    for solve in (allocate_lp, allocate_merit_order):
        got = solve(table, Target.reduction(1000)).by_resource()
        assert got == pytest.approx({"bess": 400, "t9-cheap": 200, "t9-dear": 300, "t3": 100})
        got = solve(table, Target.reduction(700)).by_resource()
        assert got == pytest.approx({"bess": 400, "t9-cheap": 200, "t9-dear": 100})


def test_more_than_capacity_allocates_everything_allowed_and_reports_shortfall() -> None:
    table = FlexibilityTable.from_flexibilities(
        [flex("a", 4, 1, 100), flex("h", 0, 1, 900), flex("b", None, 1, 50)]
    )
    result = allocate(table, Target.reduction(1000))
    assert result.method is Method.LP
    assert result.by_resource() == pytest.approx({"a": 100, "b": 50})
    assert result.shortfall_kw == pytest.approx(850)


def test_valley_filling_uses_the_same_machinery() -> None:
    table = FlexibilityTable.from_flexibilities([flex("bess", None, 0.2, 300), flex("kiln", 6, 0.1, 500)])
    result = allocate(table, Target.increase(600))
    assert result.target.direction is Direction.RAISE
    assert result.by_resource() == pytest.approx({"bess": 300, "kiln": 300})


def test_targets_from_caps_and_floors() -> None:
    assert Target.cap(18_000, 20_500) == Target.reduction(2500)
    assert Target.cap(18_000, 17_000).amount_kw == 0
    assert Target.floor(5000, 4200) == Target.increase(800)
    with pytest.raises(ValueError):
        Target.reduction(float("nan"))


def test_ramp_forced_minimum_counts_toward_the_target() -> None:
    # Giving 300 kW, may only ramp 100 kW per step: at least 200 kW stays even if the target fell to 0.
    table = FlexibilityTable.from_flexibilities([flex("hydro", None, 1, 500, dispatched_kw=300, ramp_kw=100)])
    for solve in (allocate_lp, allocate_merit_order):
        assert solve(table, Target.reduction(0)).delivered_kw == pytest.approx(200)
        assert solve(table, Target.reduction(1000)).delivered_kw == pytest.approx(400)


def test_falls_back_to_merit_order_when_the_solver_fails_or_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = FlexibilityTable.from_flexibilities([flex("a", 9, 1, 100), flex("b", 8, 1, 100)])

    def broken(*args: object, **kwargs: object) -> Allocation:
        raise allocation.SolverError("HiGHS: Time limit reached")

    monkeypatch.setattr(allocation, "allocate_lp", broken)
    result = allocate(table, Target.reduction(150))
    assert result.method is Method.MERIT_ORDER and result.fallback_reason == "HiGHS: Time limit reached"
    assert result.by_resource() == pytest.approx({"a": 100, "b": 50})
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "highspy", None)  # import highspy -> ImportError
    result = allocate(table, Target.reduction(150))
    assert result.method is Method.MERIT_ORDER and "highspy unavailable" in (result.fallback_reason or "")


def test_empty_table() -> None:
    table = FlexibilityTable.from_flexibilities([])
    assert allocate(table, Target.reduction(10)).shortfall_kw == 10


# --- invariants, for random resource sets -------------------------------------------------------

flexibilities = st.lists(
    st.builds(
        Flexibility,
        resource_id=st.just("r"),
        kind=st.just(LOAD),
        tier=st.one_of(st.none(), st.integers(0, 9)),
        # Few distinct costs: ties are where a solver's choices could differ.
        cost_per_kwh=st.sampled_from([0.1, 0.5, 1.0, 2.0, 7.5]),
        available_kw=st.floats(0, 2000, allow_nan=False),
        dispatched_kw=st.one_of(st.just(0.0), st.floats(0, 1000, allow_nan=False)),
        ramp_kw=st.one_of(st.just(float("inf")), st.floats(0, 800, allow_nan=False)),
    ),
    max_size=40,
)


def _check_invariants(table: FlexibilityTable, result: Allocation, tol: float) -> None:
    x = result.dispatch_kw
    # Limits never exceeded; tier 0 never used.
    assert np.all(x >= table.lower - tol) and np.all(x <= table.upper + tol)
    assert np.all(x[table.rank == priority_rank(0)] == 0)
    forced, capacity = float(table.lower.sum()), float(table.upper.sum())
    target = result.target.amount_kw
    # Target met whenever capacity allows; otherwise everything allowed is used.
    assert result.delivered_kw >= min(target, capacity) - tol
    # No more than asked, unless ramp limits force it.
    assert result.delivered_kw <= max(target, forced) + tol
    # Tier order: a class gives more than its forced minimum only when every earlier class is full.
    ranks = np.unique(table.rank)
    for later in ranks:
        in_later = table.rank == later
        if (x[in_later] - table.lower[in_later]).sum() > tol:
            earlier = table.rank < later
            assert (table.upper[earlier] - x[earlier]).sum() <= tol


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flexibilities, st.floats(0, 1.3, allow_nan=False))
def test_allocation_invariants_hold_for_lp_and_merit_order(
    flex_list: list[Flexibility], share: float
) -> None:
    flex_list = [
        Flexibility(f"r{i}", f.kind, f.tier, f.cost_per_kwh, f.available_kw, f.dispatched_kw, f.ramp_kw)
        for i, f in enumerate(flex_list)
    ]
    table = FlexibilityTable.from_flexibilities(flex_list)
    target = Target.reduction(share * float(table.upper.sum()))
    tol = 1e-6 * max(1.0, float(table.upper.sum()))
    lp, greedy = allocate_lp(table, target), allocate_merit_order(table, target)
    _check_invariants(table, lp, tol)
    _check_invariants(table, greedy, tol)
    # Both optimal for the same problem: same total and same cost.
    assert lp.delivered_kw == pytest.approx(greedy.delivered_kw, abs=tol)
    assert lp.cost_per_h(table) == pytest.approx(greedy.cost_per_h(table), abs=tol * 10)
    # Deterministic.
    assert np.array_equal(allocate_lp(table, target).dispatch_kw, lp.dispatch_kw)
