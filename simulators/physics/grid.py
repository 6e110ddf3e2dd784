"""Grid voltage and frequency as a device sees them at its terminals: nominal plus small slow wander."""

from __future__ import annotations

import random

from simulators.physics.randomness import MeanRevertingWalk


class GridConditions:
    def __init__(self, nominal_v: float = 230.0, nominal_hz: float = 50.0, seed: int = 0) -> None:
        rng = random.Random(seed ^ 0x5EED)
        self.nominal_v = nominal_v
        self._volt = [MeanRevertingWalk(0.0, 0.006, 120.0, -0.03, 0.03, rng) for _ in range(3)]
        self._freq = MeanRevertingWalk(nominal_hz, 0.02, 60.0, nominal_hz - 0.2, nominal_hz + 0.2, rng)

    def step(self, dt_s: float) -> None:
        for walk in (*self._volt, self._freq):
            walk.step(dt_s)

    @property
    def frequency_hz(self) -> float:
        return self._freq.value

    def phase_voltages_v(self, rise: float = 0.0) -> tuple[float, float, float]:
        """Phase-to-neutral voltages; ``rise`` (relative) lifts them, e.g. a generator pushing power out."""
        v = [self.nominal_v * (1.0 + w.value + rise) for w in self._volt]
        return v[0], v[1], v[2]
