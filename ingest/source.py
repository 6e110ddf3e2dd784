"""The MQTT side of ingest: a paho-mqtt client (its own network thread) handing messages to asyncio.

Why paho and not aiomqtt: about three times the message rate on the same machine, and ``manual_ack``,
so a QoS 1 message is acknowledged only after the batch holding it is committed. A crash between
receipt and commit therefore loses nothing: the broker redelivers, and the telemetry primary key makes
the redelivery a no-op.

Why MQTT v5: with v3.1.1 Mosquitto lets at most ``max_inflight_messages`` (default 20) unacknowledged
QoS 1 messages reach a client, which caps ack-after-commit at 20 messages per commit. A v5 client
announces its own Receive Maximum (up to 65535), and that same window is ingest's back-pressure: while
the database is down nothing is acknowledged, so the broker stops sending after ``receive_maximum``
messages and keeps the rest queued in the persistent session.

Acknowledgements are only valid on the connection that received the message: every message carries the
connection generation, and acks of an older generation are dropped (the broker redelivers those).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.settings import MqttSettings

log = logging.getLogger(__name__)


class Inbound(NamedTuple):  # (a tuple: built per message in paho's thread, the cheapest record)
    topic: str
    payload: bytes
    qos: int
    mid: int
    generation: int
    retain: bool


Ack = tuple[int, int, int]  # (generation, mid, qos)

READ_CHUNK = 256 * 1024


class _BufferedSocket:
    """paho reads each packet's fixed header a byte at a time, a ``recv`` system call per byte (four per
    telemetry message). This wrapper reads what the socket holds in one call and serves paho's small
    reads from it; ``pending()`` is paho's own hook (for TLS and websocket sockets, which buffer too)
    that keeps its loop from waiting in ``select`` while bytes are buffered."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._buffer):
            data = self._sock.recv(max(size, READ_CHUNK))  # BlockingIOError, EOF (b""): as paho expects
            if len(data) <= size:
                return bytes(data)
            self._buffer, self._at = data, 0
        chunk = self._buffer[self._at : self._at + size]
        self._at += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._buffer) - self._at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        # Plain TCP and Unix sockets only (TLS and websocket ones buffer on their own, with pending()).
        return _BufferedSocket(sock) if type(sock) is socket.socket else sock


class MqttSource:
    """Subscribes to ``subscriptions`` (filter -> QoS) and buffers messages for ``get_many``.

    The session is persistent (``clean_start=False`` with ``session_expiry_s``) under ``client_id``,
    which must be stable per ingest instance and unique across instances: Mosquitto keeps queueing a
    disconnected member's share of a shared subscription for it until its session expires. Clean start
    stays 0 on the very first connection too: Mosquitto 2.0.11 never saves a session that began with
    clean start = 1 to its persistence file, so it would not survive a broker restart.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        subscriptions: dict[str, int],
        *,
        receive_maximum: int = 65535,
        session_expiry_s: int = 7 * 24 * 3600,
    ) -> None:
        self._settings = settings
        self._subscriptions = subscriptions
        self._receive_maximum = receive_maximum
        self._session_expiry_s = session_expiry_s
        self.client_id = client_id
        self._buffer: collections.deque[Inbound] = collections.deque()
        # Set by the consumer before it waits for an empty buffer: only then does paho's thread wake the
        # loop (call_soon_threadsafe writes to the loop's self-pipe: a syscall per wake-up).
        self._waiting = False
        self._wake_pending = False
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._pending_subacks: set[int] = set()
        self.ready = asyncio.Event()  # connected and subscribed (cleared while disconnected)
        self.connected = False
        self._client = _Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- asyncio side -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    async def stop(self) -> None:
        """Disconnect cleanly (unacknowledged messages stay in the broker's session)."""
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def buffered(self) -> int:
        return len(self._buffer)

    async def get_many(self, max_items: int, timeout: float | None) -> list[Inbound]:  # noqa: ASYNC109
        """Up to ``max_items`` buffered messages; waits up to ``timeout`` s (None: forever) for the first."""
        if not self._buffer:
            self._event.clear()
            self._waiting = True  # before the second look: a message appended after it wakes us
            try:
                if not self._buffer:
                    if timeout is None:
                        await self._event.wait()
                    else:
                        try:
                            async with asyncio.timeout(timeout):
                                await self._event.wait()
                        except TimeoutError:
                            return []
            finally:
                self._waiting = False
        out: list[Inbound] = []
        pop = self._buffer.popleft
        while self._buffer and len(out) < max_items:
            out.append(pop())
        return out

    def ack(self, acks: list[Ack]) -> int:
        """Acknowledge committed messages, in the order received; returns how many were sent."""
        sent = 0
        generation = self._generation
        for gen, mid, qos in acks:
            if qos and gen == generation:
                self._client.ack(mid, qos)
                sent += 1
        return sent

    # -- paho thread --------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._wake_pending = False
        self._event.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload
        self._buffer.append(
            Inbound(
                msg.topic,
                payload if type(payload) is bytes else bytes(payload),
                msg.qos,
                msg.mid,
                self._generation,
                msg.retain,
            )
        )
        # (The consumer sets _waiting before its last look at the buffer, and we read it after the
        # append: one of the two sees the other's write, so no message waits for a wake-up that never comes.)
        if self._waiting and not self._wake_pending and self._loop is not None:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection refused", extra={"reason": str(reason_code)})
            return
        with self._gen_lock:
            self._generation += 1
        self.connected = True
        log.info(
            "MQTT connected",
            extra={"client_id": self.client_id, "session_present": flags.session_present},
        )
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        result, mid = client.subscribe(list(self._subscriptions.items()))
        if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks.add(mid)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error(
                "MQTT subscription refused", extra={"reasons": failed, "filters": list(self._subscriptions)}
            )
            return
        self._pending_subacks.discard(mid)
        if not self._pending_subacks and self._loop is not None:
            self._loop.call_soon_threadsafe(self.ready.set)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.ready.clear)
        log.warning("MQTT disconnected", extra={"reason": str(reason_code)})
