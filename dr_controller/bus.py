"""Commands out on the devices' ``cmd`` topics, results back from ``cmd/result``, over one MQTT client."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiomqtt

from core import topics
from core.dr.resources import DeviceCommand
from core.payloads import CommandResult, PayloadError, decode, encode

__all__ = ["CommandBus"]

log = logging.getLogger(__name__)

ResultHandler = Callable[[CommandResult], Awaitable[None]]


class CommandBus:
    def __init__(self, client: aiomqtt.Client, root: str) -> None:
        self._client = client
        self._root = root

    async def publish(self, dc: DeviceCommand) -> None:
        topic = topics.topic(dc.site, dc.device, topics.Channel.CMD, self._root)
        await self._client.publish(topic, encode(dc.command), qos=1)

    async def subscribe_results(self) -> None:
        await self._client.subscribe(topics.subscription(topics.Channel.CMD_RESULT, self._root), qos=1)

    async def serve_results(self, handler: ResultHandler) -> None:
        """Hand every command result to ``handler`` until cancelled (ours are told apart by id)."""
        async for message in self._client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray | str):
                continue
            try:
                result = decode(CommandResult, payload)
            except PayloadError as err:
                log.debug(
                    "undecodable command result", extra={"topic": str(message.topic), "reason": err.reason}
                )
                continue
            await handler(result)
