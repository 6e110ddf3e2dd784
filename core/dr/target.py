"""An allocation target: how much the grid must see change, in which direction.

Shared by the event model (``events.EventSpec.target``) and the allocator (``dr_controller.allocation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.dr.resources import Direction

__all__ = ["Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """How much the grid must see change, in the event's direction (kW, >= 0)."""

    direction: Direction
    amount_kw: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.amount_kw) and self.amount_kw >= 0):
            raise ValueError(f"target must be a finite amount >= 0 kW, got {self.amount_kw}")

    @classmethod
    def reduction(cls, kw: float) -> Target:
        return cls(Direction.REDUCE, kw)

    @classmethod
    def cap(cls, cap_kw: float, aggregate_kw: float) -> Target:
        """Keep the aggregate load at or under a cap: reduce by what exceeds it (nothing if under)."""
        return cls(Direction.REDUCE, max(0.0, aggregate_kw - cap_kw))

    @classmethod
    def increase(cls, kw: float) -> Target:
        return cls(Direction.RAISE, kw)

    @classmethod
    def floor(cls, floor_kw: float, aggregate_kw: float) -> Target:
        """Valley filling to a floor: raise the aggregate load to at least ``floor_kw``."""
        return cls(Direction.RAISE, max(0.0, floor_kw - aggregate_kw))
