"""Many piles in one process: ``async with run_piles(specs, url) as fleet``."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from simulators.clock import SimClock
from simulators.ocpp.pile import FleetStats, Pile
from simulators.ocpp.spec import PileSpec
from simulators.ocpp.v16 import Pile16
from simulators.ocpp.v201 import Pile201

CONNECT_RATE = 1000.0  # piles started per second (a thundering herd helps nobody)


def make_pile(spec: PileSpec, url: str, clock: SimClock, stats: FleetStats) -> Pile:
    cls = Pile16 if spec.version == "1.6" else Pile201
    return cls(spec, url, clock, stats)


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit); returns the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class PileFleet:
    clock: SimClock
    piles: dict[str, Pile]
    stats: FleetStats
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def pile(self, pile_id: str) -> Pile:
        try:
            return self.piles[pile_id]
        except KeyError:
            raise KeyError(f"no simulated pile {pile_id!r}") from None

    def __len__(self) -> int:
        return len(self.piles)

    def __iter__(self) -> Any:
        return iter(self.piles.values())

    @property
    def accepted(self) -> int:
        return sum(1 for p in self.piles.values() if p.accepted)

    @property
    def online(self) -> int:
        return sum(1 for p in self.piles.values() if p.online)

    async def wait_accepted(self, within_s: float = 30.0, count: int | None = None) -> None:
        """Until ``count`` (default: all) piles are booted and accepted."""
        want = len(self.piles) if count is None else count
        async with asyncio.timeout(within_s):
            while self.accepted < want:  # noqa: ASYNC110 (polling counters, no event to wait on)
                await asyncio.sleep(0.05)

    async def saturate(self, seconds: float) -> int:
        """Every accepted pile sends Heartbeat / MeterValues back to back (the next as soon as the answer
        is in) for ``seconds``; returns the number of answered calls."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        done = 0

        async def one(p: Pile) -> None:
            nonlocal done
            n = 0
            while loop.time() < end and p.accepted:
                try:
                    await p.saturating_call(n)
                except (ConnectionError, TimeoutError, OSError):
                    return
                n += 1
                done += 1

        await asyncio.gather(*(one(p) for p in self.piles.values() if p.accepted), return_exceptions=True)
        return done

    def power_w(self) -> float:
        return sum(p.power_w() for p in self.piles.values())

    def summary(self) -> dict[str, Any]:
        piles = self.piles.values()
        return {
            "piles": len(self.piles),
            "accepted": self.accepted,
            "online": self.online,
            "sent": self.stats.sent,
            "received": self.stats.received,
            "sessions": sum(p.counters.sessions for p in piles),
            "charging": sum(1 for p in piles for c in p.connectors if c.session is not None),
            "queued": sum(len(p.txq) for p in piles),
            "power_w": round(sum(c.power_w for p in piles for c in p.connectors), 1),
        }


@asynccontextmanager
async def run_piles(
    specs: Iterable[PileSpec],
    server_url: str,
    *,
    clock: SimClock | None = None,
    connect_rate: float = CONNECT_RATE,
    stats: FleetStats | None = None,
    server_real_time: bool = False,
) -> AsyncIterator[PileFleet]:
    """Start every pile (connect, boot, run) and stop them all when the block ends.

    ``server_url`` is the central system's base, e.g. ``ws://127.0.0.1:9000/ocpp``; each pile connects
    to ``{server_url}/{id}``. ``server_real_time``: the central system keeps real time (Lishui's does),
    so the absolute times of its charging profiles are mapped onto ``clock``. The block is entered once
    all piles are started, not yet accepted (``await fleet.wait_accepted()``).
    """
    clock = clock or SimClock()
    specs = list(specs)
    raise_fd_limit(len(specs) * 2 + 1024)
    stats = stats or FleetStats()
    piles = {s.id: make_pile(s, server_url, clock, stats) for s in specs}
    for p in piles.values():
        p.server_real_time = server_real_time
    if len(piles) != len(specs):
        raise ValueError("duplicate pile ids")
    fleet = PileFleet(clock, piles, stats)
    try:
        batch = max(1, int(connect_rate / 20))
        for i, p in enumerate(piles.values()):
            fleet.tasks.append(p.start())
            if (i + 1) % batch == 0:
                await asyncio.sleep(0.05)
        yield fleet
    finally:
        await asyncio.shield(asyncio.gather(*(p.stop() for p in piles.values()), return_exceptions=True))
        for t in fleet.tasks:
            t.cancel()
        await asyncio.gather(*fleet.tasks, return_exceptions=True)
