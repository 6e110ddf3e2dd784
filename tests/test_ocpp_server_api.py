"""/api/v1/charging: piles, lifecycle (409 on an illegal transition), passwords, tokens, violations,
transactions, and a command routed over MQTT to the OCPP node holding the pile (504 when none does)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import pytest_asyncio

from api.app import create_app
from core.registry import upsert_site, upsert_tenant
from core.settings import Settings
from ocpp_server.settings import OcppSettings
from ocpp_server.testing import raw_call, running_server, ws_connect


@pytest_asyncio.fixture(scope="module")
async def client(settings: Settings, db_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await upsert_tenant(conn, "api-op", "API operator", "operator")
        await upsert_site(conn, "api-site", "API site", tenant_key="api-op")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            yield c


async def test_pile_registry_and_lifecycle(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/charging/piles", json={"key": "api-p1", "site": "api-site", "max_power_w": 7000}
    )
    assert r.status_code == 201 and r.json()["lifecycle"] == "proposed" and r.json()["has_password"] is False
    assert (
        await client.post("/api/v1/charging/piles", json={"key": "api-p1", "site": "api-site"})
    ).status_code == 409
    assert (
        await client.post("/api/v1/charging/piles", json={"key": "api-p2", "site": "nowhere"})
    ).status_code == 422
    assert (
        await client.post("/api/v1/charging/piles", json={"key": "BAD KEY", "site": "api-site"})
    ).status_code == 422
    assert (await client.post("/api/v1/charging/piles/api-p1/accept")).status_code == 409
    for action, state in [("approve", "approved"), ("mark_built", "built"), ("accept", "accepted")]:
        r = await client.post(f"/api/v1/charging/piles/api-p1/{action}")
        assert r.status_code == 200 and r.json()["lifecycle"] == state
    assert (await client.post("/api/v1/charging/piles/api-p1/explode")).status_code == 422
    assert (await client.post("/api/v1/charging/piles/nobody/approve")).status_code == 404
    assert (
        await client.put("/api/v1/charging/piles/api-p1/password", json={"password": "short"})
    ).status_code == 422
    r = await client.put("/api/v1/charging/piles/api-p1/password", json={"password": "a-long-password"})
    assert r.status_code == 204
    assert (await client.get("/api/v1/charging/piles/api-p1")).json()["has_password"] is True
    assert [p["key"] for p in (await client.get("/api/v1/charging/piles?site=api-site")).json()] == ["api-p1"]
    r = await client.post("/api/v1/charging/tokens", json={"token": "API-TOK", "tenant": "api-op"})
    assert r.status_code == 201 and r.json()["tenant"] == "api-op"
    assert (
        await client.post("/api/v1/charging/tokens", json={"token": "X", "tenant": "no-op"})
    ).status_code == 422
    assert any(t["token"] == "API-TOK" for t in (await client.get("/api/v1/charging/tokens")).json())
    assert (await client.get("/api/v1/charging/violations?pile=api-p1")).json() == []
    assert (await client.get("/api/v1/charging/transactions?status=bogus")).status_code == 422


async def test_command_via_api_reaches_the_pile(client: httpx.AsyncClient, settings: Settings) -> None:
    await client.post(
        "/api/v1/charging/piles", json={"key": "api-p3", "site": "api-site", "password": "pw-api-p3-x"}
    )
    for action in ("approve", "mark_built", "accept"):
        await client.post(f"/api/v1/charging/piles/api-p3/{action}")
    r = await client.post("/api/v1/charging/piles/api-p3/commands", json={"op": "reset", "timeout_s": 1})
    assert r.status_code == 504  # nobody holds the pile
    async with running_server(settings, OcppSettings(node="api-node", ping_interval_s=0)) as port:
        async with ws_connect(port, "api-p3", "pw-api-p3-x", "ocpp1.6") as ws:
            assert (await raw_call(ws, [2, "hb", "Heartbeat", {}]))[0] == 3
            import asyncio
            import json

            async def pile_side() -> None:
                frame = json.loads(await ws.recv())
                assert frame[0] == 2 and frame[2] == "Reset" and frame[3] == {"type": "Soft"}
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))

            task = asyncio.create_task(pile_side())
            r = await client.post(
                "/api/v1/charging/piles/api-p3/commands",
                json={"op": "reset", "args": {"type": "Soft"}, "timeout_s": 10},
            )
            await task
    assert r.status_code == 200
    assert r.json()["status"] == "accepted" and r.json()["response"] == {"status": "Accepted"}


@pytest.mark.parametrize("path", ["/api/v1/charging/violations", "/api/v1/charging/transactions"])
async def test_lists_answer(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200
