"""The cyclic garbage collector on a node holding thousands of long-lived pile connections.

A connected pile is a few dozen container objects (websocket, protocol, transport, the pile and its
state) that live as long as its connection, typically hours. CPython's full collection walks every
tracked object: with 10,000 piles, half a second or more during which no pile is answered. While a
fleet connects, full collections recur every few seconds (one is due once the objects promoted since
the last reach a quarter of those it kept), each longer than the last, and later ones land among live
traffic.

So the survivors of a full collection that took longer than ``full_budget_ms`` are frozen at once
(``gc.freeze`` in the collector's "stop" callback: right after a full collection every object left is
alive, so nothing frozen is garbage, and freezing costs no pause of its own). Later collections walk
only what came since, so a full collection stays about ``full_budget_ms`` long however many piles are
held. Frozen objects are never collected, though, and a pile that disconnects leaves cyclic garbage
(its websocket, protocol and transport refer to each other): once the piles gone since the last
reclaim reach ``reclaim_share`` of those held, everything is unfrozen and collected in one pass (one
pause per that much churn, memory bounded), and what survives is frozen again. The same at least every
``reclaim_every_s`` once anything was frozen: freezing is process-wide, and in a process composing
several services (``lishui demo``) objects besides the piles' die in cycles too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class GcPolicy:
    """``held()``: piles connected now; ``departed()``: piles disconnected so far (a running count)."""

    def __init__(
        self,
        held: Callable[[], int],
        departed: Callable[[], int],
        *,
        full_budget_ms: float = 10.0,
        reclaim_min: int = 500,
        reclaim_share: float = 0.25,
        reclaim_every_s: float = 3600.0,
        check_s: float = 5.0,
    ) -> None:
        self.held = held
        self.departed = departed
        self.full_budget_ms = full_budget_ms
        self.reclaim_min = reclaim_min
        self.reclaim_share = reclaim_share
        self.reclaim_every_s = reclaim_every_s
        self.check_s = check_s
        self.freezes = 0  # full collections whose survivors were frozen
        self.reclaims = 0
        self.last_full_ms = 0.0
        self._departed_at_reclaim = departed()
        self._freezes_at_reclaim = 0
        self._reclaimed_at = time.monotonic()
        self._started = 0.0

    # ------------------------------------------------------------------------ the collector's hook

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.last_full_ms = (time.perf_counter() - self._started) * 1000
        if self.last_full_ms >= self.full_budget_ms:
            gc.freeze()
            self.freezes += 1

    # ---------------------------------------------------------------------------------- reclaiming

    def reclaim_due(self) -> bool:
        gone = self.departed() - self._departed_at_reclaim
        if gone >= max(self.reclaim_min, self.reclaim_share * self.held()):
            return True
        frozen_since = self.freezes > self._freezes_at_reclaim
        return frozen_since and time.monotonic() - self._reclaimed_at >= self.reclaim_every_s

    def reclaim(self) -> int:
        """Unfreeze, collect everything, freeze the survivors; returns the objects freed."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.reclaims += 1
        self._departed_at_reclaim = self.departed()
        self._freezes_at_reclaim = self.freezes
        self._reclaimed_at = time.monotonic()
        log.info(
            "gc: frozen objects reclaimed",
            extra={
                "piles": self.held(),
                "freed": freed,
                "pause_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return freed

    async def run(self) -> None:
        """Hooked into the collector while running; reclaims when due."""
        self.install()
        freezes = 0
        try:
            while True:
                await asyncio.sleep(self.check_s)
                if self.freezes != freezes:
                    freezes = self.freezes
                    log.info(
                        "gc: survivors of a slow full collection frozen",
                        extra={
                            "piles": self.held(),
                            "freezes": freezes,
                            "full_ms": round(self.last_full_ms, 1),
                        },
                    )
                if self.reclaim_due():
                    self.reclaim()
        finally:
            self.uninstall()
