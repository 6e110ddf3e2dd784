"""Websocket pings for every pile a node holds, from one task, spread evenly over the interval.

websockets' own keepalive runs a task per connection whose first ping comes ``ping_interval`` after the
connection opened: a fleet that connected together (a server restart, a network back) is pinged
together, thousands of pings at once every interval, and every round leaves each connection's sleep and
timeout objects alive for a whole interval — long-lived objects that the cyclic collector walks (see
``gcpolicy``). Here one task pings the held piles in small slices every ``tick_s``, each pile once per
``interval_s``; a pile whose pong is not back within ``timeout_s`` is taken for dead and its connection
closed with 1011, as websockets' keepalive does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

log = logging.getLogger(__name__)


class Keepalive:
    """``connections()``: the websockets to keep alive now (read once per round)."""

    def __init__(
        self,
        connections: Callable[[], Sequence[ServerConnection]],
        interval_s: float,
        timeout_s: float,
        tick_s: float = 0.25,
    ) -> None:
        self.connections = connections
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.tick_s = min(tick_s, interval_s)
        self.pings = 0
        self.dead = 0
        self._checks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        ticks = max(1, round(self.interval_s / self.tick_s))
        try:
            while True:
                held = list(self.connections())  # piles joining meanwhile wait for the next round
                started = loop.time()
                for k in range(ticks):
                    for ws in held[len(held) * k // ticks : len(held) * (k + 1) // ticks]:
                        if ws.state is State.OPEN:
                            # A task per ping, living one round trip: sending can wait on a peer that
                            # does not read, and must not hold up the others' pings.
                            task = asyncio.create_task(self._check(ws))
                            self._checks.add(task)
                            task.add_done_callback(self._checks.discard)
                    await asyncio.sleep(max(0.0, started + (k + 1) * self.tick_s - loop.time()))
        finally:
            for task in list(self._checks):
                task.cancel()

    async def _check(self, ws: ServerConnection) -> None:
        """Ping; no pong within ``timeout_s`` (sending included): close the connection, 1011."""
        self.pings += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                pong = await ws.ping()
                await pong
        except ConnectionClosed:
            return
        except TimeoutError:
            if ws.state is not State.OPEN:
                return
            self.dead += 1
            log.warning("keepalive ping timeout: connection closed", extra={"peer": str(ws.remote_address)})
            await ws.close(1011, "keepalive ping timeout")
