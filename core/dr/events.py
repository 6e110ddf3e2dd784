"""Demand-response events (table ``dr_events``, migration 0010) as a validated model, and their lifecycle.

The database enforces the same rules (checks and a trigger), so a client going around this module
still cannot store an event that makes no sense or skip a state.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from core.dr.baselines import PROGRAM_BASELINES
from core.dr.resources import Direction
from core.dr.target import Target

__all__ = ["EventKind", "EventScope", "EventSpec", "EventState", "Notice", "can_transition"]


class EventKind(StrEnum):
    PEAK_SHAVING = "peak_shaving"
    VALLEY_FILLING = "valley_filling"


class EventState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Notice(StrEnum):
    DAY_AHEAD = "day_ahead"
    INTRADAY = "intraday"


class EventScope(StrEnum):
    COUNTY = "county"
    TOWN = "town"
    FEEDER = "feeder"
    SITES = "sites"


_TRANSITIONS = {
    EventState.SCHEDULED: {EventState.ACTIVE, EventState.CANCELLED},
    EventState.ACTIVE: {EventState.COMPLETED, EventState.CANCELLED},
}


def can_transition(old: EventState, new: EventState) -> bool:
    """Same-state 'transitions' are amendments: allowed only while scheduled."""
    if old == new:
        return old is EventState.SCHEDULED
    return new in _TRANSITIONS.get(old, set())


class EventSpec(BaseModel):
    """What the grid company asks for (the writable part of a ``dr_events`` row)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    kind: EventKind
    target_kw: float | None = Field(default=None, gt=0)
    cap_kw: float | None = Field(default=None, ge=0)  # peak shaving: keep aggregate load under this
    floor_kw: float | None = Field(default=None, ge=0)  # valley filling: keep aggregate load over this
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    notice: Notice
    scope: EventScope = EventScope.COUNTY
    town_id: int | None = None
    feeder: str | None = None
    site_ids: list[int] | None = None
    baseline: str = "high_5_of_10_adjusted"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        amounts = [a for a in (self.target_kw, self.cap_kw, self.floor_kw) if a is not None]
        if len(amounts) != 1:
            raise ValueError("give exactly one of target_kw, cap_kw, floor_kw")
        if self.cap_kw is not None and self.kind is not EventKind.PEAK_SHAVING:
            raise ValueError("cap_kw is for peak shaving")
        if self.floor_kw is not None and self.kind is not EventKind.VALLEY_FILLING:
            raise ValueError("floor_kw is for valley filling")
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if any(t.timestamp() % 900 for t in (self.starts_at, self.ends_at)):
            raise ValueError("an event covers whole 15-minute intervals")
        given = {
            EventScope.TOWN: self.town_id is not None,
            EventScope.FEEDER: self.feeder is not None,
            EventScope.SITES: bool(self.site_ids),
        }
        if any(present != (scope is self.scope) for scope, present in given.items()):
            raise ValueError(f"scope {self.scope} takes its own selector (town_id, feeder, site_ids) only")
        if self.baseline not in PROGRAM_BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}")
        return self

    @property
    def direction(self) -> Direction:
        return Direction.REDUCE if self.kind is EventKind.PEAK_SHAVING else Direction.RAISE

    def target(self, aggregate_kw: float) -> Target:
        """This cycle's allocation target, given the scope's aggregate load now (for caps and floors)."""
        if self.target_kw is not None:
            return Target(self.direction, self.target_kw)
        if self.cap_kw is not None:
            return Target.cap(self.cap_kw, aggregate_kw)
        assert self.floor_kw is not None
        return Target.floor(self.floor_kw, aggregate_kw)

    def is_on(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at
