"""Simulated time: a wall clock that can run faster than real time, or stand still for tests."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    """``now()`` = ``start`` + real time elapsed since creation x ``factor`` (+ manual advances).

    ``factor=0`` freezes the clock; tests then move it with ``advance()``, so physics results do not
    depend on how fast the machine is. ``start`` defaults to the real present.
    """

    def __init__(self, factor: float = 1.0, start: datetime | None = None) -> None:
        if factor < 0:
            raise ValueError("factor must be >= 0")
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._factor = float(factor)
        self._start = start.astimezone(UTC) if start is not None else datetime.now(UTC)
        self._t0 = time.monotonic()
        self._offset_s = 0.0

    @property
    def factor(self) -> float:
        """Simulated seconds per real second."""
        return self._factor

    @factor.setter
    def factor(self, factor: float) -> None:
        # Re-anchor so simulated time stays continuous across the change.
        if factor < 0:
            raise ValueError("factor must be >= 0")
        self._offset_s = self.elapsed_s()
        self._t0 = time.monotonic()
        self._factor = float(factor)

    def elapsed_s(self) -> float:
        """Simulated seconds since the start."""
        return self._offset_s + (time.monotonic() - self._t0) * self._factor

    def now(self) -> datetime:
        """The simulated time, timezone-aware (UTC)."""
        return self._start + timedelta(seconds=self.elapsed_s())

    def advance(self, seconds: float) -> None:
        """Jump simulated time forward (for tests and for skipping nights)."""
        if seconds < 0:
            raise ValueError("simulated time never runs backwards")
        self._offset_s += seconds

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep for ``sim_seconds`` of simulated time (real time if the clock is frozen)."""
        await asyncio.sleep(sim_seconds / self._factor if self._factor > 0 else sim_seconds)
