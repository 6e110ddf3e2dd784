"""core.registry: idempotent upserts and the resolver ingest uses (real PostgreSQL)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from core import registry


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_upserts_are_idempotent(conn: psycopg.AsyncConnection) -> None:
    tenant, site, device = _key("op"), _key("site"), _key("pv")
    t1 = await registry.upsert_tenant(conn, tenant, "Operator", "operator")
    t2 = await registry.upsert_tenant(conn, tenant, "Operator", "operator")
    assert t1 == t2
    s1 = await registry.upsert_site(conn, site, "Park", tenant, "lipu", "park", 2, "F12", 29.6, 111.7)
    s2 = await registry.upsert_site(conn, site, "Park", tenant, "lipu", "park", 2, "F12", 29.6, 111.7)
    assert s1 == s2
    args = (device, site, "pv_inverter", "sunspec-pv", "Acme", "X1", 50_000.0, None)
    d1 = await registry.upsert_device(conn, *args, attributes={"strings": 4})
    d2 = await registry.upsert_device(conn, *args, attributes={"strings": 4})
    d3 = await registry.upsert_device(conn, *args)  # attributes=None keeps them
    assert d1 == d2 == d3
    cur = await conn.execute("SELECT xmin::text, attributes, lifecycle FROM devices WHERE id = %s", (d1,))
    xmin, attributes, lifecycle = await cur.fetchone()  # type: ignore[misc]
    assert attributes == {"strings": 4} and lifecycle == "operating"
    await registry.upsert_device(conn, *args)
    cur = await conn.execute("SELECT xmin::text FROM devices WHERE id = %s", (d1,))
    assert (await cur.fetchone()) == (xmin,), "an unchanged upsert must not write a new row version"
    # A change is applied, same id.
    await registry.upsert_site(conn, site, "Park 2", tenant, "lipu", "park", 1, "F12", 29.6, 111.7)
    cur = await conn.execute("SELECT name, tier FROM sites WHERE id = %s", (s1,))
    assert await cur.fetchone() == ("Park 2", 1)


async def test_upsert_rejects_unknown_references(conn: psycopg.AsyncConnection) -> None:
    with pytest.raises(registry.RegistryError):
        await registry.upsert_site(conn, _key("site"), "X", "no-such-tenant", None)
    with pytest.raises(registry.RegistryError):
        await registry.upsert_device(conn, _key("d"), "no-such-site", "meter")


async def test_resolver_registers_unknown_devices_and_detects_conflicts(db_dsn: str) -> None:
    resolver = registry.DeviceResolver()
    site, other, device = _key("site"), _key("site"), _key("meter")
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        device_id = await resolver.resolve(conn, site, device)
        assert resolver.cached(site, device) == device_id
        assert await resolver.resolve(conn, site, device) == device_id
        cur = await conn.execute(
            "SELECT d.lifecycle, d.kind, s.kind FROM devices d JOIN sites s ON s.id = d.site_id"
            " WHERE d.id = %s",
            (device_id,),
        )
        assert await cur.fetchone() == ("discovered", "other", "unknown")
        await conn.commit()
        # A fresh resolver (another process) finds the same row.
        assert await registry.DeviceResolver().resolve(conn, site, device) == device_id
        with pytest.raises(registry.DeviceConflict) as err:
            await resolver.resolve(conn, other, device)
        assert err.value.registered_site == site
        many = await resolver.resolve_many(conn, [(site, device), (other, device), (other, _key("new"))])
        assert many[(site, device)] == device_id
        assert isinstance(many[(other, device)], registry.DeviceConflict)
        assert resolver.registered == 2
        # Registering the discovered device properly promotes it.
        await registry.upsert_device(conn, device, site, "meter")
        await conn.commit()
        cur = await conn.execute("SELECT lifecycle, kind FROM devices WHERE id = %s", (device_id,))
        assert await cur.fetchone() == ("operating", "meter")
