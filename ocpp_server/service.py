"""``run_ocpp_server``: the OCPP central system node, running until cancelled.

One websocket server (``/ocpp/{chargePointId}``), one MQTT client (publishing telemetry, status and
events; subscribed to the ``cmd`` topics of the piles held here and, through a shared subscription, to
site-level commands), one database pool, and a LISTEN connection for allocation changes — all in one
TaskGroup, unwound cleanly on cancellation (connections closed, piles' offline statuses and the node's
own offline status published).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any

import aiomqtt
from websockets.asyncio.server import serve

from core import mqtt as core_mqtt
from core.db import create_pool
from core.payloads import Command, DeviceState, PayloadError, Status, decode, encode
from core.settings import DatabaseSettings, Settings
from core.topics import SITE_TARGET, Channel, parse, service_status, shared, subscription, topic
from ocpp_server.bus import Bus
from ocpp_server.commands import run_command
from ocpp_server.gcpolicy import GcPolicy
from ocpp_server.keepalive import Keepalive
from ocpp_server.pile import Context
from ocpp_server.server import SUBPROTOCOLS, Hub, select_subprotocol
from ocpp_server.settings import OcppSettings, ocpp_settings
from ocpp_server.smart import Allocator, handle_site_command
from ocpp_server.writes import BootDecider, ConnectionNotes, StatusWriter

log = logging.getLogger(__name__)


def node_name(cfg: OcppSettings) -> str:
    if cfg.node:
        return cfg.node
    raw = f"{socket.gethostname()}-{os.getpid()}".lower()
    return re.sub(r"[^a-z0-9_.-]", "-", raw)[:60] or "ocpp"


def _pool_settings(settings: Settings, cfg: OcppSettings) -> DatabaseSettings:
    return settings.db.model_copy(update={"pool_max": max(settings.db.pool_max, cfg.pool_max)})


def _tls(cfg: OcppSettings) -> ssl.SSLContext | None:
    if not (cfg.tls_cert and cfg.tls_key):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


async def run_ocpp_server(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    *,
    ocpp: OcppSettings | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve piles until cancelled. ``port=0`` picks a free port, reported to ``on_listening``."""
    cfg = ocpp or ocpp_settings(settings)
    cfg = cfg.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    node = node_name(cfg)
    root = settings.topic_root
    node_topic = service_status("ocpp", node, root)
    will = aiomqtt.Will(
        node_topic, encode(Status(state=DeviceState.OFFLINE, reason="lost", source=node)), 1, True
    )
    hub = Hub()
    tasks: set[asyncio.Task[Any]] = set()
    async with (
        create_pool(_pool_settings(settings, cfg), "ocpp") as pool,
        core_mqtt.client(settings.mqtt, f"lishui-ocpp-{root}-{node}"[:128], will=will) as client,
    ):
        bus = Bus(client)
        statuses = StatusWriter(pool)
        ctx = Context(
            settings=settings,
            ocpp=cfg,
            pool=pool,
            bus=bus,
            node=node,
            hub=hub,
            statuses=statuses,
            connections=ConnectionNotes(pool),
            boots=BootDecider(pool),
        )
        hub.ctx = ctx
        cached = await hub.auths.preload()
        log.info("pile auth rows preloaded", extra={"piles": cached})
        allocator = Allocator(ctx)
        extra: dict[str, Any] = {"reuse_port": True} if cfg.reuse_port else {}
        try:
            async with serve(
                hub.handler,
                cfg.host,
                cfg.port,
                subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
                select_subprotocol=select_subprotocol,
                process_request=hub.process_request,
                ping_interval=None,  # one node-wide keepalive instead (see keepalive)
                ping_timeout=None,
                ssl=_tls(cfg),
                max_size=cfg.max_message_bytes,
                compression="deflate" if cfg.ws_compression else None,
                server_header="lishui-ocpp",
                **extra,
            ) as server:
                bound = next(iter(server.sockets)).getsockname()[1] if server.sockets else cfg.port
                log.info(
                    "OCPP server listening",
                    extra={"node": node, "port": bound, "tls": cfg.tls_cert is not None},
                )
                await client.publish(
                    node_topic, encode(Status(state=DeviceState.ONLINE, source=node)), 1, retain=True
                )
                if on_listening is not None:
                    on_listening(bound)
                # What start-up built lives as long as the node: out of the cyclic collector's passes;
                # then the piles' connections as they come (see gcpolicy).
                gc.collect()
                gc.freeze()
                gc_policy = GcPolicy(lambda: len(hub.by_id), lambda: hub.departed)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(gc_policy.run(), name="ocpp-gc-policy")
                    if cfg.ping_interval_s > 0:
                        keepalive = Keepalive(hub.websockets, cfg.ping_interval_s, cfg.ping_timeout_s)
                        tg.create_task(keepalive.run(), name="ocpp-keepalive")
                    tg.create_task(bus.run(), name="ocpp-publisher")
                    tg.create_task(statuses.run(), name="ocpp-status-writer")
                    tg.create_task(ctx.connections.run(), name="ocpp-connection-notes")
                    tg.create_task(allocator.listen(), name="ocpp-allocation-listen")
                    tg.create_task(allocator.run(), name="ocpp-allocation")
                    tg.create_task(_commands(ctx, client, tasks), name="ocpp-commands")
        finally:
            for task in list(tasks):
                task.cancel()
            await bus.drain()
            try:
                await statuses.flush()
            except Exception as err:
                log.warning("connector statuses lost at shutdown", extra={"error": str(err)})
            try:
                await client.publish(
                    node_topic,
                    encode(Status(state=DeviceState.OFFLINE, reason="stopped", source=node)),
                    1,
                    retain=True,
                )
            except aiomqtt.MqttError:
                pass
            log.info("OCPP server stopped", extra={"node": node})


async def _commands(ctx: Context, client: aiomqtt.Client, tasks: set[asyncio.Task[Any]]) -> None:
    root = ctx.settings.topic_root
    await client.subscribe(
        shared(ctx.ocpp.share_group, subscription(Channel.CMD, root, device=SITE_TARGET)), qos=1
    )
    async for message in client.messages:
        try:
            addr = parse(str(message.topic), root)
        except ValueError:
            continue
        if addr.channel is not Channel.CMD:
            continue
        try:
            cmd = decode(Command, message.payload if isinstance(message.payload, bytes | str) else b"")
        except PayloadError as err:
            log.warning("invalid command", extra={"topic": str(message.topic), "reason": err.reason})
            continue
        task = asyncio.create_task(_one_command(ctx, addr.site, addr.device, cmd), name=f"cmd-{cmd.id}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _one_command(ctx: Context, site: str, device: str, cmd: Command) -> None:
    root = ctx.settings.topic_root
    try:
        if device == SITE_TARGET:
            result = await handle_site_command(ctx, site, cmd)
        else:
            pile = ctx.hub.by_key.get(device)
            if pile is None or pile.auth.site_key != site:
                log.debug("command for a pile not held here", extra={"pile": device})
                return
            result = await run_command(pile, cmd)
    except Exception:
        log.exception("command failed", extra={"site": site, "device": device, "id": cmd.id})
        return
    ctx.bus.publish(topic(site, device, Channel.CMD_RESULT, root), result)
