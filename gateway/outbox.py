"""What waits to be published. The MQTT link only needs the ``Outbox`` protocol: ``gateway.spool.Spool``
(the default, on disk) and the bounded in-memory ``MemoryOutbox`` here both implement it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway import metrics


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    ref: int = -1  # the outbox's own reference (a spool record id); -1 when it keeps none


class Outbox(Protocol):
    def put(self, message: Outbound) -> None: ...

    async def get(self) -> Outbound:
        """The next message to publish; it is in flight until ``done`` or ``put_back``."""

    def done(self, message: Outbound) -> None:
        """The message taken with get() is confirmed (its PUBACK arrived)."""

    def put_back(self, message: Outbound) -> None:
        """A message taken with get() that was not confirmed: it goes out first next time."""

    async def drained(self) -> None:
        """Returns once nothing is queued or in flight."""

    def next_seq(self, topic: str) -> int:
        """The first telemetry ``seq`` for ``topic`` (where an earlier run left off)."""

    def watch_seqs(self, source: Callable[[], dict[str, int]]) -> None:
        """``source()`` gives the next ``seq`` per telemetry topic, for outboxes that persist it."""

    def close(self) -> None: ...

    def __len__(self) -> int: ...


class MemoryOutbox:
    """Bounded FIFO; when full, the oldest message is dropped (and counted). Lost on a restart."""

    def __init__(self, max_messages: int = 50_000) -> None:
        self._queue: deque[Outbound] = deque()
        self._max = max_messages
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, message: Outbound) -> None:
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self._drop()
        self._queue.append(message)
        self._changed()

    def put_back(self, message: Outbound) -> None:
        self._in_flight -= 1
        if len(self._queue) >= self._max:
            self._drop()  # it is the oldest one anyway
        else:
            self._queue.appendleft(message)
        self._changed()

    async def get(self) -> Outbound:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        self._in_flight += 1
        message = self._queue.popleft()
        self._changed()
        return message

    def done(self, message: Outbound) -> None:
        self._in_flight -= 1
        self._changed()

    async def drained(self) -> None:
        await self._idle.wait()

    def next_seq(self, topic: str) -> int:
        return 0

    def watch_seqs(self, source: Callable[[], dict[str, int]]) -> None:
        pass

    def close(self) -> None:
        pass

    def _drop(self) -> None:
        self.dropped += 1
        metrics.PUBLISH_DROPPED.inc()

    def _changed(self) -> None:
        metrics.PUBLISH_QUEUE_DEPTH.set(len(self._queue))
        if self._queue:
            self._ready.set()
        if self._queue or self._in_flight:
            self._idle.clear()
        else:
            self._idle.set()
