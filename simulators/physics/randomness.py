"""Seeded noise shared by the physics models: stable seeds and a bounded mean-reverting random walk."""

from __future__ import annotations

import math
import random
import zlib


def stable_seed(*parts: object) -> int:
    """A seed from names, identical across processes (``hash()`` is salted per process)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


class MeanRevertingWalk:
    """An Ornstein-Uhlenbeck process clipped to [lo, hi]: wanders around ``mean``, never drifts away.

    The exact discretisation makes the statistics independent of the step size, so lazily stepped
    devices polled at different rates still look alike.
    """

    def __init__(
        self,
        mean: float,
        sigma: float,
        tau_s: float,
        lo: float,
        hi: float,
        rng: random.Random,
        start: float | None = None,
    ) -> None:
        self.mean, self.sigma, self.tau_s, self.lo, self.hi = mean, sigma, tau_s, lo, hi
        self._rng = rng
        self.value = min(hi, max(lo, mean if start is None else start))

    def step(self, dt_s: float) -> float:
        if dt_s <= 0 or self.sigma == 0:
            return self.value
        decay = math.exp(-dt_s / self.tau_s)
        spread = self.sigma * math.sqrt(1.0 - decay * decay)
        x = self.mean + (self.value - self.mean) * decay + spread * self._rng.gauss(0.0, 1.0)
        self.value = min(self.hi, max(self.lo, x))
        return self.value
