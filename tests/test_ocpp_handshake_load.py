"""The handshake under load: many piles connecting at the same instant through a tiny database pool are
all accepted (their auth rows looked up in a few batched queries), none refused for a pool shortage; and
a password changed in the registry takes effect at once despite the cache."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from core.charging import registry
from core.charging.passwords import hash_password
from core.registry import upsert_site
from core.settings import DatabaseSettings, Settings
from ocpp_server.settings import OcppSettings
from ocpp_server.testing import basic_auth, running_server

N = 300
PW = "load-pile-password-1"


async def _open(port: int, pid: str, password: str) -> int:
    """The HTTP status of the handshake (101 when accepted)."""
    try:
        async with connect(
            f"ws://127.0.0.1:{port}/ocpp/{pid}",
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers=basic_auth(pid, password),
            open_timeout=30,
        ):
            await asyncio.sleep(0.5)  # every connection open at the same time
            return 101
    except InvalidStatus as err:
        return err.response.status_code


async def test_simultaneous_handshakes_through_a_tiny_pool(settings: Settings) -> None:
    site = f"load-{uuid.uuid4().hex[:6]}"
    ids = [f"{site}-{i:04d}" for i in range(N)]
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        await upsert_site(conn, site, "handshake load", town_key="lipu", kind="charging")
        for pid in ids:
            await registry.add_pile(conn, pid, site, lifecycle="accepted", connectors=1)
        # one cheap hash for all (scrypt at log2 n = 10): the test is about the database path
        await conn.execute(
            "UPDATE charge_points cp SET password_hash = %s FROM devices d JOIN sites s ON s.id = d.site_id"
            " WHERE d.id = cp.device_id AND s.key = %s",
            (hash_password(PW, log2_n=10), site),
        )
    tiny = settings.model_copy(update={"db": DatabaseSettings(dsn=settings.db.dsn, pool_min=1, pool_max=1)})
    # no cache: every handshake needs the database, through a pool of 2 shared with everything else
    cfg = OcppSettings(node=f"{site}-node", ping_interval_s=0, pool_max=2, auth_cache_ttl_s=0)
    async with running_server(tiny, cfg) as port:
        statuses = await asyncio.gather(*(_open(port, pid, PW) for pid in ids))
        assert statuses == [101] * N
        # a password changed in the registry: the old one is refused, the new one accepted at once
        async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
            await registry.set_password(conn, ids[0], "load-pile-password-2")
        assert await _open(port, ids[0], PW) == 401
        assert await _open(port, ids[0], "load-pile-password-2") == 101


@pytest.mark.parametrize("ttl", [60.0])
async def test_cached_row_is_rechecked_on_a_new_password(settings: Settings, ttl: float) -> None:
    site = f"load-{uuid.uuid4().hex[:6]}"
    pid = f"{site}-cp"
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        await upsert_site(conn, site, "handshake cache", town_key="lipu", kind="charging")
        await registry.add_pile(conn, pid, site, lifecycle="accepted", password=PW)
    cfg = OcppSettings(node=f"{site}-node", ping_interval_s=0, auth_cache_ttl_s=ttl)
    async with running_server(settings, cfg) as port:
        assert await _open(port, pid, PW) == 101  # now cached
        async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
            await registry.set_password(conn, pid, "load-pile-password-3")
        assert await _open(port, pid, "load-pile-password-3") == 101
        assert await _open(port, pid, PW) == 401
        assert await _open(port, f"{site}-unknown", PW) == 404
