"""Test and bench helpers: a server in a task, an MQTT recorder, raw OCPP-J clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from websockets.asyncio.client import ClientConnection, connect

from core import mqtt as core_mqtt
from core.settings import Settings
from ocpp_server.service import run_ocpp_server
from ocpp_server.settings import OcppSettings


@contextlib.asynccontextmanager
async def running_server(settings: Settings, ocpp: OcppSettings) -> AsyncIterator[int]:
    """Run the server on a free port; yields the port."""
    loop = asyncio.get_running_loop()
    bound: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(
        run_ocpp_server(settings, ocpp=ocpp, port=0, on_listening=bound.set_result), name="ocpp-server"
    )
    try:
        async with asyncio.timeout(15):
            while not bound.done():
                if task.done():
                    task.result()
                    raise RuntimeError("OCPP server stopped before listening")
                await asyncio.sleep(0.05)
        yield bound.result()
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:  # a shutdown that hangs: show where, rather than hang the test run
            for t in asyncio.all_tasks():
                t.print_stack(limit=8, file=sys.stderr)
            raise AssertionError("OCPP server did not stop within 30 s of its cancellation")
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Recorder:
    """Every message under a topic filter, decoded as JSON."""

    messages: list[tuple[str, Any, bool]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(
        self, predicate: Callable[[str, Any], bool], within_s: float = 10.0, count: int = 1
    ) -> list[tuple[str, Any]]:
        async with asyncio.timeout(within_s):
            while True:
                found = [(t, p) for t, p, _ in self.messages if predicate(t, p)]
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def recording(settings: Settings, topic_filter: str) -> AsyncIterator[Recorder]:
    rec = Recorder()
    async with core_mqtt.client(settings.mqtt, f"ocpp-test-rec-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic_filter, qos=1)

        async def pump() -> None:
            async for m in client.messages:
                raw = m.payload if isinstance(m.payload, bytes | str) else b"null"
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                rec.messages.append((str(m.topic), body, bool(m.retain)))
                rec._changed.set()

        task = asyncio.create_task(pump())
        try:
            yield rec
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@contextlib.asynccontextmanager
async def ws_connect(
    port: int, ocpp_id: str, password: str | None, subprotocol: str | list[str] | None
) -> AsyncIterator[ClientConnection]:
    protocols = [subprotocol] if isinstance(subprotocol, str) else subprotocol
    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/{ocpp_id}",
        subprotocols=protocols,  # type: ignore[arg-type]
        additional_headers=basic_auth(ocpp_id, password) if password else None,
        open_timeout=10,
    ) as ws:
        yield ws


async def raw_call(ws: ClientConnection, frame: str | list[Any], within_s: float = 5.0) -> list[Any]:
    """Send a frame, return the next frame the server sends."""
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    answer = await asyncio.wait_for(ws.recv(), within_s)
    result: list[Any] = json.loads(answer)
    return result
