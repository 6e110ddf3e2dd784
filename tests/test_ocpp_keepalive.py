"""Websocket keepalive of the OCPP server (ocpp_server.keepalive): every held pile is pinged each
interval; a pile that answers stays connected, one that stops answering is closed with 1011. Piles
are raw websocket clients here, so the test sees every ping and decides whether to answer it."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator

import psycopg
import pytest_asyncio

from core.charging import registry
from core.registry import upsert_site, upsert_tenant
from core.settings import Settings
from ocpp_server.settings import OcppSettings
from ocpp_server.testing import running_server

PW = "keepalive-password-1"
PING, PONG, CLOSE = 0x9, 0xA, 0x8
INTERVAL_S, TIMEOUT_S = 0.3, 0.3


@pytest_asyncio.fixture(scope="module")
async def port(settings: Settings, db_dsn: str) -> AsyncIterator[int]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await upsert_tenant(conn, "ka-op", "Keepalive operator", "operator")
        await upsert_site(conn, "ka-site", "Keepalive site", tenant_key="ka-op")
        for key in ("ka-live", "ka-dead"):
            await registry.add_pile(conn, key, "ka-site", lifecycle="operating", password=PW)
    cfg = OcppSettings(node="ka-node", ping_interval_s=INTERVAL_S, ping_timeout_s=TIMEOUT_S)
    async with running_server(settings, cfg) as p:
        yield p


async def _open(port: int, ocpp_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    auth = base64.b64encode(f"{ocpp_id}:{PW}".encode()).decode()
    writer.write(
        (
            f"GET /ocpp/{ocpp_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: ocpp1.6\r\nAuthorization: Basic {auth}\r\n\r\n"
        ).encode()
    )
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response
    return reader, writer


async def _frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the server (unmasked): opcode and payload."""
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(size)


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def test_a_pile_answering_pings_stays_connected(port: int) -> None:
    reader, writer = await _open(port, "ka-live")
    try:
        # Several rounds, each answered: longer in all than the ping timeout, and never a close.
        for _ in range(4):
            async with asyncio.timeout(5 * INTERVAL_S):
                opcode, payload = await _frame(reader)
            assert opcode == PING
            writer.write(_masked(PONG, payload))
    finally:
        writer.close()


async def test_a_pile_that_stops_answering_is_closed_with_1011(port: int) -> None:
    reader, writer = await _open(port, "ka-dead")
    try:
        async with asyncio.timeout(5 * INTERVAL_S):
            opcode, _ = await _frame(reader)
        assert opcode == PING  # ... left unanswered
        async with asyncio.timeout(INTERVAL_S + TIMEOUT_S + 5):
            while opcode == PING:
                opcode, payload = await _frame(reader)
        assert opcode == CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1011
        assert b"keepalive" in payload[2:]
    finally:
        writer.close()
