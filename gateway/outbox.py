"""What waits to be published. The MQTT link only needs the ``Outbox`` protocol, so the bounded
in-memory queue here can be replaced by an on-disk spool without touching the link."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from gateway import metrics


@dataclass(frozen=True, slots=True)
class Outbound:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Outbox(Protocol):
    def put(self, message: Outbound) -> None: ...

    def put_back(self, message: Outbound) -> None:
        """A message taken with get() that was not confirmed: it goes out first next time."""

    async def get(self) -> Outbound: ...

    def done(self) -> None:
        """The message taken with get() is confirmed (or put back)."""

    async def drained(self) -> None:
        """Returns once nothing is queued or in flight."""

    def __len__(self) -> int: ...


class MemoryOutbox:
    """Bounded FIFO; when full, the oldest message is dropped (and counted)."""

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
        if len(self._queue) >= self._max:
            self._drop()  # it is the oldest one anyway
            return
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

    def done(self) -> None:
        self._in_flight -= 1
        self._changed()

    async def drained(self) -> None:
        await self._idle.wait()

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
