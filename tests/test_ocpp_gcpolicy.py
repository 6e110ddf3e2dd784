"""ocpp_server.gcpolicy: survivors of slow full collections frozen, departed piles' garbage reclaimed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ocpp_server.gcpolicy import GcPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (gc.freeze is process-wide)."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.collect()


def test_a_full_collection_over_budget_freezes_its_survivors() -> None:
    policy = GcPolicy(lambda: 0, lambda: 0, full_budget_ms=0.0)
    policy.install()
    try:
        kept = _cycle()
        gc.collect()
    finally:
        policy.uninstall()
    assert policy.freezes == 1
    assert gc.get_freeze_count() > 0
    assert all(o is not kept for o in gc.get_objects())  # frozen: in no generation the collector walks


def test_a_full_collection_within_budget_freezes_nothing() -> None:
    policy = GcPolicy(lambda: 0, lambda: 0, full_budget_ms=1e9)
    policy.install()
    try:
        gc.collect()
        gc.collect(1)
    finally:
        policy.uninstall()
    assert policy.freezes == 0
    assert gc.get_freeze_count() == 0


def test_frozen_garbage_waits_for_a_reclaim_which_frees_it() -> None:
    departed = 0
    policy = GcPolicy(lambda: 1_000, lambda: departed, reclaim_min=3, reclaim_share=0.0)
    connection = _cycle()  # a pile's objects: they refer to each other
    gone = weakref.ref(connection)
    gc.collect()
    gc.freeze()  # frozen while the pile was connected
    del connection  # the pile disconnects: its objects are cyclic garbage now
    departed += 1
    gc.collect()
    assert gone() is not None  # frozen objects are never collected...
    assert not policy.reclaim_due()
    departed += 2
    assert policy.reclaim_due()
    policy.reclaim()  # ...until a reclaim unfreezes and collects them
    assert gone() is None
    assert policy.reclaims == 1 and not policy.reclaim_due()


@pytest.mark.parametrize(("held", "due_at"), [(0, 500), (1_000, 500), (10_000, 2_500)])
def test_reclaim_is_due_after_a_share_of_the_held_piles_departed(held: int, due_at: int) -> None:
    departed = 0
    policy = GcPolicy(lambda: held, lambda: departed)
    departed = due_at - 1
    assert not policy.reclaim_due()
    departed = due_at
    assert policy.reclaim_due()


def test_reclaim_is_due_after_a_while_once_something_was_frozen() -> None:
    policy = GcPolicy(lambda: 10_000, lambda: 0, full_budget_ms=0.0, reclaim_every_s=0.0)
    assert not policy.reclaim_due()  # nothing frozen by the policy: nothing to reclaim
    policy.install()
    try:
        gc.collect()
    finally:
        policy.uninstall()
    assert policy.reclaim_due()
    policy.reclaim()
    assert not policy.reclaim_due()
