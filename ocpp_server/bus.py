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
    ``run`` (QoS 1 waits for the broker's acknowledgement there, not in the handler)."""

    def __init__(self, client: aiomqtt.Client, maxsize: int = 100_000) -> None:
        self.client = client
        self._queue: asyncio.Queue[tuple[str, bytes, int, bool]] = asyncio.Queue(maxsize)
        self._subscribed: set[str] = set()
        self.dropped = 0

    def publish(self, topic: str, payload: BaseModel, *, qos: int = 1, retain: bool = False) -> None:
        try:
            self._queue.put_nowait((topic, encode(payload), qos, retain))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("publish queue full: message dropped", extra={"topic": topic})
        metrics.PUBLISH_QUEUE.set(self._queue.qsize())

    async def run(self) -> None:
        while True:
            topic, body, qos, retain = await self._queue.get()
            try:
                await self.client.publish(topic, body, qos=qos, retain=retain)
            except aiomqtt.MqttError as err:
                log.error("publish failed", extra={"topic": topic, "error": str(err)})
            finally:
                self._queue.task_done()
                metrics.PUBLISH_QUEUE.set(self._queue.qsize())

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

    async def subscribe(self, topic: str) -> None:
        if topic not in self._subscribed:
            self._subscribed.add(topic)
            await self.client.subscribe(topic, qos=1)

    async def unsubscribe(self, topic: str) -> None:
        if topic in self._subscribed:
            self._subscribed.discard(topic)
            try:
                await self.client.unsubscribe(topic)
            except aiomqtt.MqttError as err:
                log.warning("unsubscribe failed", extra={"topic": topic, "error": str(err)})
