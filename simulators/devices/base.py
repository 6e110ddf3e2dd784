"""What every simulated device offers the server and the tests."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

from core.metrics import metric
from simulators.clock import SimClock
from simulators.registers import RegisterImage, WriteRule

MIN_STEP_S = 1e-3  # requests arriving together share one physics step


class SimDevice(ABC):
    """A device whose registers reflect its physics at the clock's present time.

    Physics is stepped lazily: a request (or ``value()``) first advances the model to ``clock.now()``,
    so idle devices cost nothing and polled ones are always current.
    """

    kind: str = "other"

    def __init__(self, key: str, clock: SimClock, unit_id: int = 1) -> None:
        self.key = key
        self.clock = clock
        self.unit_id = unit_id
        self.registers = RegisterImage()
        self.paused = False
        self._last: datetime | None = None

    # --- physics -------------------------------------------------------------------------------
    def sync(self, now: datetime | None = None) -> None:
        """Advance the physics to ``now`` (default: the clock) and refresh the register image."""
        now = now or self.clock.now()
        if self._last is None:
            dt = 0.0
        else:
            dt = (now - self._last).total_seconds()
            if dt < MIN_STEP_S:
                return
        self._load_controls(now)
        self._step(now, dt)
        self._last = now
        self._refresh()

    @abstractmethod
    def _load_controls(self, now: datetime) -> None:
        """Read the writable registers into the physics (and apply reversion timeouts)."""

    @abstractmethod
    def _step(self, now: datetime, dt_s: float) -> None: ...

    @abstractmethod
    def _refresh(self) -> None:
        """Write the physics state into the register image."""

    @abstractmethod
    def metrics(self) -> dict[str, float]:
        """The physics' current values by catalogue metric name, in catalogue units (no sync).

        Only metrics the device's registers expose: an end-to-end test can expect each one to arrive.
        """

    @abstractmethod
    def resolutions(self) -> dict[str, float]:
        """Per metric of ``metrics()``: the step its register encodes (what a reader can resolve)."""

    def _on_write(self, rules: list[WriteRule], now: datetime) -> None:  # noqa: B027 - optional hook
        """Called after a client wrote the points of ``rules`` (e.g. to start a reversion timer)."""

    # --- register access (the server and raw test access) -------------------------------------
    def read(self, address: int, count: int) -> list[int]:
        self.sync()
        return self.registers.read(address, count)

    def write(self, address: int, values: list[int]) -> None:
        now = self.clock.now()
        self.sync(now)  # the time up to the write ran with the old controls
        rules = self.registers.write(address, values)
        self._on_write(rules, now)
        # A zero-length step applies the new controls now (within the model's ramps), so a read right
        # after the write already shows their effect.
        self._load_controls(now)
        self._step(now, 0.0)
        self._refresh()

    # --- test hooks ---------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop answering: requests get no response at all, so the client times out (a dead device)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def value(self, metric_name: str) -> float:
        """The current physics value of a catalogue metric (KeyError if this device has no such metric)."""
        metric(metric_name)  # unknown names fail with the catalogue's message
        self.sync()
        values = self.metrics()
        if metric_name not in values:
            raise KeyError(f"{self.key} ({self.kind}) does not provide {metric_name!r}")
        return values[metric_name]

    def resolution(self, metric_name: str) -> float:
        """The smallest step ``metric_name`` is encoded with in this device's registers (e.g. 1000 W for a
        multi-MW meter with W_SF = 3), so a comparison of ``value()`` with what a client read can use
        half of it as its tolerance."""
        value = self.resolutions().get(metric_name)
        if value is None:
            raise KeyError(f"{self.key} ({self.kind}) does not provide {metric_name!r}")
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"
