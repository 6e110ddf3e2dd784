"""MQTT side of the OCPP server: an ordered publish queue and subscriptions to held piles' cmd topics."""

from __future__ import annotations

import asyncio
import logging

import aiomqtt
from pydantic import BaseModel

from core.payloads import encode
from ocpp_server import metrics

log = logging.getLogger(__name__)


class Bus:
    """Publishing never blocks a pile's handler: messages go through a queue drained in order by
    ``run``, a window of up to ``window`` QoS 1 publishes at a time (sent in queue order, then their
    acknowledgements awaited together), so one broker round trip carries many messages.

    Subscriptions to held piles' ``cmd`` topics are queued too and sent many topics per SUBSCRIBE /
    UNSUBSCRIBE packet (a fleet reconnecting at once costs a few packets, not one round trip per pile),
    in the order asked."""

    def __init__(self, client: aiomqtt.Client, maxsize: int = 100_000, window: int = 256) -> None:
        self.client = client
        self.window = window
        client.pending_calls_threshold = window + 64  # a full window is normal, not a warning
        self._queue: asyncio.Queue[tuple[str, bytes, int, bool]] = asyncio.Queue(maxsize)
        self._subscribed: set[str] = set()
        self._sub_ops: list[tuple[bool, str]] = []  # (subscribe?, topic) in the order asked
        self._sub_wake = asyncio.Event()
        self.dropped = 0

    def publish(self, topic: str, payload: BaseModel, *, qos: int = 1, retain: bool = False) -> None:
        try:
            self._queue.put_nowait((topic, encode(payload), qos, retain))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("publish queue full: message dropped", extra={"topic": topic})

    async def run(self) -> None:
        """Publish what is queued, and carry out queued (un)subscriptions, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._run_subscriptions(), name="ocpp-subscriptions")
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self.window and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                metrics.PUBLISH_QUEUE.set(self._queue.qsize())
                results = await asyncio.gather(
                    *(self.client.publish(t, b, qos=q, retain=r) for t, b, q, r in batch),
                    return_exceptions=True,
                )
                for (topic, *_), res in zip(batch, results, strict=True):
                    if isinstance(res, aiomqtt.MqttError):
                        log.error("publish failed", extra={"topic": topic, "error": str(res)})
                    elif isinstance(res, BaseException):
                        raise res
                for _ in batch:
                    self._queue.task_done()

    async def drain(self, limit_s: float = 5.0) -> None:
        """Publish what is still queued (at shutdown, after ``run`` stopped)."""
        try:
            async with asyncio.timeout(limit_s):
                while not self._queue.empty():
                    topic, body, qos, retain = self._queue.get_nowait()
                    self._queue.task_done()
                    await self.client.publish(topic, body, qos=qos, retain=retain)
        except (TimeoutError, aiomqtt.MqttError) as err:
            log.warning("messages lost at shutdown", extra={"left": self._queue.qsize(), "error": repr(err)})

    async def flush(self, limit_s: float = 5.0) -> None:
        async with asyncio.timeout(limit_s):
            await self._queue.join()

    def subscribe(self, topic: str) -> None:
        if topic not in self._subscribed:
            self._subscribed.add(topic)
            self._sub_ops.append((True, topic))
            self._sub_wake.set()

    def unsubscribe(self, topic: str) -> None:
        if topic in self._subscribed:
            self._subscribed.discard(topic)
            self._sub_ops.append((False, topic))
            self._sub_wake.set()

    async def _run_subscriptions(self) -> None:
        while True:
            await self._sub_wake.wait()
            self._sub_wake.clear()
            ops, self._sub_ops = self._sub_ops, []
            i = 0
            while i < len(ops):  # runs of the same kind, each in packets of up to 500 topics
                kind = ops[i][0]
                j = i
                while j < len(ops) and ops[j][0] == kind and j - i < 500:
                    j += 1
                topics = [t for _, t in ops[i:j]]
                try:
                    if kind:
                        await self.client.subscribe([(t, 1) for t in topics])
                    else:
                        await self.client.unsubscribe(topics)
                except aiomqtt.MqttError as err:
                    log.warning(
                        "(un)subscribe failed",
                        extra={"subscribe": kind, "topics": len(topics), "error": str(err)},
                    )
                i = j
