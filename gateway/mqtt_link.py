"""The gateway's one MQTT connection: publishes what the outbox holds, receives commands, reconnects
with backoff when the broker goes away.

The gateway's own status is ``{root}/v1/_sys/gateway/{name}/status`` (core.topics.service_status;
retained, QoS 1, core.payloads.Status); the broker publishes the connection's last will there
(``offline``) if the gateway dies. It is one level deeper than device topics, so no device filter
matches it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable

import aiomqtt

from core import mqtt, topics
from core.payloads import (
    Command,
    CommandResult,
    CommandStatus,
    DeviceState,
    PayloadError,
    Status,
    decode,
    encode,
)
from core.settings import Settings
from gateway.outbox import Outbound, Outbox

log = logging.getLogger(__name__)

PUBLISH_WORKERS = 16  # concurrent QoS 1 publishes in flight (each waits for its PUBACK)
SUBSCRIBE_CHUNK = 100


def gateway_status_topic(root: str, name: str) -> str:
    return topics.service_status("gateway", name, root)


CommandHandler = Callable[[str, str, Command], None]  # site, device, command


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        name: str,
        outbox: Outbox,
        devices: list[tuple[str, str]],
        on_command: CommandHandler,
    ) -> None:
        self.settings = settings
        self.name = name
        self.outbox = outbox
        self.root = settings.topic_root
        self.status_topic = gateway_status_topic(self.root, name)
        self._cmd_topics = [topics.topic(site, dev, topics.Channel.CMD, self.root) for site, dev in devices]
        self._on_command = on_command
        self._retained: dict[str, bytes] = {}  # latest status per topic, re-sent after a reconnect
        self.connected = asyncio.Event()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if retain:
            self._retained[topic] = payload
        self.outbox.put(Outbound(topic, payload, qos=1, retain=retain))

    def publish_result(self, site: str, device: str, result: CommandResult) -> None:
        self.publish(topics.topic(site, device, topics.Channel.CMD_RESULT, self.root), encode(result))

    def _gateway_status(self, state: DeviceState, reason: str | None = None) -> bytes:
        return encode(Status(state=state, reason=reason, source=self.name))

    async def run(self) -> None:
        """Connect, serve, reconnect with exponential backoff and jitter; runs until cancelled."""
        delay = 0.5
        down_logged = False
        while True:
            error = await self._session_until_lost()
            if self.connected.is_set():  # it was up: start backing off afresh, and say so once
                self.connected.clear()
                delay, down_logged = 0.5, False
            if not down_logged:
                log.warning("MQTT broker unreachable, reconnecting", extra={"error": str(error)})
                down_logged = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.settings.gateway.max_backoff_s)

    async def _session_until_lost(self) -> aiomqtt.MqttError:
        lost: list[aiomqtt.MqttError] = []
        try:
            await self._session()
        except* aiomqtt.MqttError as group:
            lost += [e for e in group.exceptions if isinstance(e, aiomqtt.MqttError)]
        if not lost:
            raise AssertionError("an MQTT session only ends with an error")
        return lost[0]

    async def _session(self) -> None:
        will = aiomqtt.Will(
            self.status_topic, self._gateway_status(DeviceState.OFFLINE, "gateway lost"), 1, True
        )
        client = mqtt.client(self.settings.mqtt, f"lishui-gateway-{self.name}", will=will)
        client.pending_calls_threshold = (
            PUBLISH_WORKERS + 16
        )  # our workers' in-flight publishes are by design
        async with client:
            await client.publish(
                self.status_topic, self._gateway_status(DeviceState.ONLINE), qos=1, retain=True
            )
            for i in range(0, len(self._cmd_topics), SUBSCRIBE_CHUNK):
                await client.subscribe([(t, 1) for t in self._cmd_topics[i : i + SUBSCRIBE_CHUNK]])
            for topic, payload in list(self._retained.items()):
                await client.publish(topic, payload, qos=1, retain=True)
            self.connected.set()
            log.info(
                "MQTT connected", extra={"broker": f"{self.settings.mqtt.host}:{self.settings.mqtt.port}"}
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name="mqtt-receive")
                for i in range(PUBLISH_WORKERS):
                    tg.create_task(self._send(client), name=f"mqtt-send-{i}")

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            message = await self.outbox.get()
            try:
                await client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain, timeout=10
                )
            except BaseException:
                self.outbox.put_back(message)  # not confirmed: send again (at least once)
                raise
            self.outbox.done(message)  # the PUBACK arrived: the outbox may forget it

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(str(message.topic), message.payload)

    def _dispatch(self, topic: str, payload: object) -> None:
        try:
            address = topics.parse(topic, self.root)
        except ValueError:
            return
        if address.channel is not topics.Channel.CMD:
            return
        raw = payload if isinstance(payload, bytes | bytearray | str) else b""
        try:
            command = decode(Command, raw)
        except PayloadError as err:
            log.warning("malformed command", extra={"device": address.device, "reason": err.reason})
            command_id = _recover_id(raw)
            if command_id is not None:
                result = CommandResult(
                    id=command_id, status=CommandStatus.REJECTED, detail=f"malformed: {err.reason}"
                )
                self.publish_result(address.site, address.device, result)
            return
        self._on_command(address.site, address.device, command)

    async def say_goodbye(self, statuses: dict[str, bytes], timeout_s: float = 3.0) -> None:
        """On clean shutdown: final (retained) statuses, the gateway's own offline, then flush."""
        for topic, payload in statuses.items():
            self.publish(topic, payload, retain=True)
        self.publish(
            self.status_topic, self._gateway_status(DeviceState.OFFLINE, "gateway stopped"), retain=True
        )
        try:
            async with asyncio.timeout(timeout_s):
                await self.outbox.drained()
        except TimeoutError:
            log.warning("shutdown: unpublished messages left", extra={"queued": len(self.outbox)})


def _recover_id(raw: bytes | bytearray | str) -> str | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
