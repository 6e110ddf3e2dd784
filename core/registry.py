"""The device registry: tenants, sites and devices, written idempotently, and the resolver ingest uses.

Every ``upsert_*`` is idempotent (same arguments, same row, same id, and no new row version when nothing
changed) and returns the row's id. They run on the caller's connection and inside the caller's
transaction, if any.

``DeviceResolver`` maps the ``(site, device)`` of a topic to ``devices.id`` with an in-memory cache. A
device nobody registered is registered on first sight with lifecycle ``discovered`` (its site too, with
kind ``unknown``), so telemetry is never lost; a device key registered under *another* site is a
conflict (``DeviceConflict``), because keys are unique across the whole county.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from core.topics import check_key

log = logging.getLogger(__name__)

__all__ = [
    "DeviceConflict",
    "DeviceResolver",
    "RegistryError",
    "upsert_device",
    "upsert_site",
    "upsert_tenant",
]


class RegistryError(LookupError):
    """A reference to a tenant, town or site that does not exist."""


class DeviceConflict(Exception):
    """The device key is registered under another site than the one the message came from."""

    def __init__(self, site_key: str, device_key: str, registered_site: str) -> None:
        super().__init__(
            f"device {device_key!r} is registered under site {registered_site!r}, not {site_key!r}"
        )
        self.site_key = site_key
        self.device_key = device_key
        self.registered_site = registered_site


async def _upsert(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any], key_sql: str) -> int:
    """Run an ``INSERT .. ON CONFLICT DO UPDATE .. WHERE changed RETURNING id``; an unchanged row returns
    nothing, so its id is read back with ``key_sql``."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
        if row is None:
            await cur.execute(key_sql, params)
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def upsert_tenant(conn: psycopg.AsyncConnection[Any], key: str, name: str, kind: str) -> int:
    return await _upsert(
        conn,
        "INSERT INTO tenants AS t (key, name, kind) VALUES (%(key)s, %(name)s, %(kind)s)"
        " ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind"
        " WHERE (t.name, t.kind) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.kind) RETURNING id",
        {"key": key, "name": name, "kind": kind},
        "SELECT id FROM tenants WHERE key = %(key)s",
    )


async def _id_of(conn: psycopg.AsyncConnection[Any], table: str, key: str | None) -> int | None:
    if key is None:
        return None
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            psycopg.sql.SQL("SELECT id FROM {} WHERE key = %s").format(psycopg.sql.Identifier(table)), (key,)
        )
        row = await cur.fetchone()
    if row is None:
        raise RegistryError(f"unknown {table.rstrip('s')} {key!r}")
    return int(row[0])


async def upsert_site(
    conn: psycopg.AsyncConnection[Any],
    key: str,
    name: str,
    tenant_key: str | None = None,
    town_key: str | None = None,
    kind: str = "park",
    tier: int = 3,
    feeder: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> int:
    check_key(key)
    params = {
        "key": key,
        "name": name,
        "tenant_id": await _id_of(conn, "tenants", tenant_key),
        "town_id": await _id_of(conn, "towns", town_key),
        "kind": kind,
        "tier": tier,
        "feeder": feeder,
        "latitude": latitude,
        "longitude": longitude,
    }
    cols = ("name", "tenant_id", "town_id", "kind", "tier", "feeder", "latitude", "longitude")
    return await _upsert(
        conn,
        "INSERT INTO sites AS s (key, name, tenant_id, town_id, kind, tier, feeder, latitude, longitude)"
        " VALUES (%(key)s, %(name)s, %(tenant_id)s, %(town_id)s, %(kind)s, %(tier)s, %(feeder)s,"
        " %(latitude)s, %(longitude)s)"
        f" ON CONFLICT (key) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in cols)}"
        f" WHERE ({', '.join(f's.{c}' for c in cols)}) IS DISTINCT FROM"
        f" ({', '.join(f'EXCLUDED.{c}' for c in cols)}) RETURNING id",
        params,
        "SELECT id FROM sites WHERE key = %(key)s",
    )


async def upsert_device(
    conn: psycopg.AsyncConnection[Any],
    key: str,
    site_key: str,
    kind: str,
    profile: str | None = None,
    vendor: str | None = None,
    model: str | None = None,
    rated_power_w: float | None = None,
    tier: int | None = None,
    lifecycle: str = "operating",
    attributes: dict[str, Any] | None = None,
) -> int:
    """Register or update a device. An explicit registration is authoritative: it may move the device to
    another site and it promotes a ``discovered`` device. ``attributes=None`` keeps the stored ones."""
    check_key(key)
    site_id = await _id_of(conn, "sites", site_key)
    params = {
        "key": key,
        "site_id": site_id,
        "kind": kind,
        "profile": profile,
        "vendor": vendor,
        "model": model,
        "rated_power_w": rated_power_w,
        "tier": tier,
        "lifecycle": lifecycle,
        "attributes": Jsonb(attributes) if attributes is not None else None,
    }
    cols = ("site_id", "kind", "profile", "vendor", "model", "rated_power_w", "tier", "lifecycle")
    return await _upsert(
        conn,
        "INSERT INTO devices AS d"
        " (key, site_id, kind, profile, vendor, model, rated_power_w, tier, lifecycle, attributes)"
        " VALUES (%(key)s, %(site_id)s, %(kind)s, %(profile)s, %(vendor)s, %(model)s,"
        " %(rated_power_w)s, %(tier)s, %(lifecycle)s, COALESCE(%(attributes)s::jsonb, '{}'::jsonb))"
        f" ON CONFLICT (key) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in cols)},"
        " attributes = COALESCE(%(attributes)s::jsonb, d.attributes)"
        f" WHERE ({', '.join(f'd.{c}' for c in cols)}, d.attributes) IS DISTINCT FROM"
        f" ({', '.join(f'EXCLUDED.{c}' for c in cols)}, COALESCE(%(attributes)s::jsonb, d.attributes))"
        " RETURNING id",
        params,
        "SELECT id FROM devices WHERE key = %(key)s",
    )


Pair = tuple[str, str]  # (site_key, device_key)


class DeviceResolver:
    """``(site_key, device_key) -> devices.id`` for ingest, cached; registers unknown devices.

    ``resolve_many`` needs a connection that is *not* inside a transaction: registrations are committed
    in a transaction of their own before the ids are cached (a cached id must never belong to a row
    that a later rollback removes).

    Conflicts are remembered for ``conflict_ttl_s`` so a flood of misaddressed messages costs one query.
    Registry changes made elsewhere (a device moved to another site) reach the cache via ``invalidate``
    or a restart.
    """

    def __init__(self, *, max_entries: int = 200_000, conflict_ttl_s: float = 60.0) -> None:
        self._ids: dict[Pair, int] = {}
        self._conflicts: dict[Pair, tuple[float, DeviceConflict]] = {}
        self._max_entries = max_entries
        self._conflict_ttl_s = conflict_ttl_s
        self.registered = 0  # devices this resolver auto-registered

    def cached(self, site_key: str, device_key: str) -> int | None:
        return self._ids.get((site_key, device_key))

    def invalidate(self, device_key: str | None = None) -> None:
        if device_key is None:
            self._ids.clear()
            self._conflicts.clear()
            return
        for cache in (self._ids, self._conflicts):
            for pair in [p for p in cache if p[1] == device_key]:
                del cache[pair]

    async def resolve(self, conn: psycopg.AsyncConnection[Any], site_key: str, device_key: str) -> int:
        """The device's id; raises ``DeviceConflict``."""
        found = (await self.resolve_many(conn, [(site_key, device_key)]))[(site_key, device_key)]
        if isinstance(found, DeviceConflict):
            raise found
        return found

    async def resolve_many(
        self, conn: psycopg.AsyncConnection[Any], pairs: Iterable[Pair]
    ) -> dict[Pair, int | DeviceConflict]:
        out: dict[Pair, int | DeviceConflict] = {}
        misses: set[Pair] = set()
        now = time.monotonic()
        for pair in pairs:
            if pair in out:
                continue
            if (hit := self._ids.get(pair)) is not None:
                out[pair] = hit
            elif (c := self._conflicts.get(pair)) is not None and c[0] > now:
                out[pair] = c[1]
            else:
                misses.add(pair)
        if not misses:
            return out
        if conn.info.transaction_status != TransactionStatus.IDLE:
            raise RuntimeError("DeviceResolver needs a connection outside any transaction")
        async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            found = await self._lookup(cur, misses)
            unknown = sorted(p for p in misses if p[1] not in found)
            if unknown:
                await self._register(cur, unknown)
                found = await self._lookup(cur, misses)
        if len(self._ids) + len(misses) > self._max_entries:
            self._ids.clear()
        for pair in misses:
            device_id, registered_site = found[pair[1]]
            if registered_site == pair[0]:
                self._ids[pair] = device_id
                out[pair] = device_id
            else:
                conflict = DeviceConflict(pair[0], pair[1], registered_site)
                self._conflicts[pair] = (now + self._conflict_ttl_s, conflict)
                out[pair] = conflict
        return out

    @staticmethod
    async def _lookup(
        cur: psycopg.AsyncCursor[tuple[Any, ...]], pairs: set[Pair]
    ) -> dict[str, tuple[int, str]]:
        await cur.execute(
            "SELECT d.key, d.id, s.key FROM devices d JOIN sites s ON s.id = d.site_id WHERE d.key = ANY(%s)",
            ([p[1] for p in pairs],),
        )
        return {key: (device_id, site) for key, device_id, site in await cur.fetchall()}

    async def _register(self, cur: psycopg.AsyncCursor[tuple[Any, ...]], pairs: list[Pair]) -> None:
        # Sorted and ON CONFLICT DO NOTHING: two ingest processes discovering the same device at once
        # both end up with the one row, and never deadlock.
        sites = sorted({p[0] for p in pairs})
        await cur.execute(
            "INSERT INTO sites (key, name, kind) SELECT k, k, 'unknown' FROM unnest(%s::text[]) AS k"
            " ORDER BY k ON CONFLICT (key) DO NOTHING",
            (sites,),
        )
        seen: set[str] = set()
        for site_key, device_key in pairs:
            if device_key in seen:  # the same new key arriving from two sites at once: first one wins
                continue
            seen.add(device_key)
            await cur.execute(
                "INSERT INTO devices (key, site_id, kind, lifecycle)"
                " SELECT %s, id, 'other', 'discovered' FROM sites WHERE key = %s"
                " ON CONFLICT (key) DO NOTHING RETURNING id",
                (device_key, site_key),
            )
            if await cur.fetchone() is not None:
                self.registered += 1
                log.warning("unregistered device discovered", extra={"site": site_key, "device": device_key})
