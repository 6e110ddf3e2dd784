"""Charge points, their lifecycle, passwords, id tokens and violations: version-free database functions.

Lifecycle (devices.lifecycle), as the county supervises piles::

    proposed --approve--> approved --mark_built--> built --accept--> accepted
    accepted --(first Accepted BootNotification)--> operating
    approved/built/accepted/operating --suspend--> suspended --resume--> accepted
    any but retired --retire--> retired

The rule "未批先建、未验先投" at BootNotification (``decide_boot``):

- accepted / operating: ``Accepted`` (an accepted pile's first Accepted boot moves it to operating);
- approved / built / suspended (approved, possibly built, not yet or no longer allowed to operate):
  ``Pending`` and a violation (``operating_before_acceptance`` / ``operating_while_suspended``); the
  pile keeps its connection and is asked to retry, so it becomes Accepted as soon as it is accepted;
- proposed / discovered / retired (never approved, or taken out of service): ``Rejected`` and a violation
  (``operating_before_approval`` / ``operating_after_retirement``).

Functions run on the caller's connection; those that must be atomic open their own transaction block
(nested in the caller's, if any, as a savepoint).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.charging.passwords import hash_password
from core.payloads import utcnow
from core.topics import check_key

Conn = psycopg.AsyncConnection[Any]

LIFECYCLES = ("proposed", "approved", "built", "accepted", "operating", "suspended", "retired")
# action -> (allowed from, to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "approve": (frozenset({"proposed"}), "approved"),
    "mark_built": (frozenset({"approved"}), "built"),
    "accept": (frozenset({"built"}), "accepted"),
    "suspend": (frozenset({"approved", "built", "accepted", "operating"}), "suspended"),
    "resume": (frozenset({"suspended"}), "accepted"),
    "retire": (
        frozenset({"discovered", "proposed", "approved", "built", "accepted", "operating", "suspended"}),
        "retired",
    ),
}
OPERABLE = frozenset({"accepted", "operating"})
VIOLATION_WINDOW_S = 3600


class PileNotFound(LookupError):
    pass


class PileExists(ValueError):
    pass


class IllegalTransition(ValueError):
    def __init__(self, key: str, action: str, current: str) -> None:
        super().__init__(f"pile {key!r} is {current}: {action} is not allowed")
        self.current = current


class BootStatus(StrEnum):
    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


class AuthStatus(StrEnum):
    ACCEPTED = "accepted"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    WRONG_TENANT = "wrong_tenant"


@dataclass(frozen=True, slots=True)
class PileAuth:
    """What the handshake and the connection need about a pile."""

    device_id: int
    key: str
    ocpp_id: str
    site_key: str
    site_id: int
    tenant_id: int | None
    lifecycle: str
    password_hash: str | None
    max_power_w: float | None


@dataclass(frozen=True, slots=True)
class BootDecision:
    status: BootStatus
    lifecycle: str
    violation: str | None


@dataclass(frozen=True, slots=True)
class AuthResult:
    status: AuthStatus
    valid_until: datetime | None = None
    parent: str | None = None


# ---------------------------------------------------------------------------------------------- piles

_PILE_SELECT = (
    "SELECT d.id AS device_id, d.key, cp.ocpp_id, s.key AS site, t.key AS tenant, d.lifecycle,"
    " cp.max_power_w, cp.speed, d.vendor, d.model, cp.serial_number, cp.firmware_version,"
    " cp.ocpp_version, cp.last_boot_at, cp.last_boot_status, cp.last_connected_at, cp.node,"
    " d.status, d.status_at, (cp.password_hash IS NOT NULL) AS has_password,"
    " COALESCE((SELECT jsonb_agg(jsonb_build_object('evse_id', c.evse_id, 'connector_id', c.connector_id,"
    "   'status', c.status, 'error_code', c.error_code, 'status_at', c.status_at)"
    "   ORDER BY c.evse_id, c.connector_id) FROM charge_point_connectors c WHERE c.device_id = d.id),"
    "   '[]'::jsonb) AS connectors"
    " FROM charge_points cp JOIN devices d ON d.id = cp.device_id JOIN sites s ON s.id = d.site_id"
    " LEFT JOIN tenants t ON t.id = s.tenant_id"
)


async def add_pile(
    conn: Conn,
    key: str,
    site_key: str,
    *,
    ocpp_id: str | None = None,
    max_power_w: float | None = None,
    speed: str = "slow",
    vendor: str | None = None,
    model: str | None = None,
    lifecycle: str = "proposed",
    connectors: int = 0,
    password: str | None = None,
) -> dict[str, Any]:
    """Register a new pile (a devices row of kind charge_point plus its charge_points row)."""
    check_key(key)
    if lifecycle not in LIFECYCLES:
        raise ValueError(f"unknown lifecycle {lifecycle!r}")
    if speed not in ("fast", "slow"):
        raise ValueError("speed must be fast or slow")
    pw_hash = await asyncio.to_thread(hash_password, password) if password else None
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("SELECT id FROM sites WHERE key = %s", (site_key,))
        site = await cur.fetchone()
        if site is None:
            raise PileNotFound(f"unknown site {site_key!r}")
        await cur.execute(
            "INSERT INTO devices (key, site_id, kind, vendor, model, rated_power_w, lifecycle)"
            " VALUES (%s, %s, 'charge_point', %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING id",
            (key, site[0], vendor, model, max_power_w, lifecycle),
        )
        row = await cur.fetchone()
        if row is None:
            raise PileExists(f"device {key!r} already exists")
        try:
            await cur.execute(
                "INSERT INTO charge_points (device_id, ocpp_id, password_hash, max_power_w, speed)"
                " VALUES (%s, %s, %s, %s, %s)",
                (row[0], ocpp_id or key, pw_hash, max_power_w, speed),
            )
        except psycopg.errors.UniqueViolation:
            raise PileExists(f"OCPP identity {ocpp_id or key!r} already in use") from None
        except psycopg.errors.CheckViolation:
            raise ValueError(f"invalid OCPP identity {ocpp_id!r}") from None
        for n in range(1, connectors + 1):
            await cur.execute(
                "INSERT INTO charge_point_connectors (device_id, evse_id, connector_id) VALUES (%s, %s, %s)",
                (row[0], n, n),
            )
    return await get_pile(conn, key)


async def get_pile(conn: Conn, key: str) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_PILE_SELECT + " WHERE d.key = %s", (key,))
        row = await cur.fetchone()
    if row is None:
        raise PileNotFound(f"pile {key!r} not found")
    return row


async def list_piles(
    conn: Conn,
    *,
    site: str | None = None,
    tenant: str | None = None,
    lifecycle: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _PILE_SELECT + " WHERE (%(site)s::text IS NULL OR s.key = %(site)s)"
            " AND (%(tenant)s::text IS NULL OR t.key = %(tenant)s)"
            " AND (%(lifecycle)s::text IS NULL OR d.lifecycle = %(lifecycle)s)"
            " ORDER BY d.key LIMIT %(limit)s OFFSET %(offset)s",
            {"site": site, "tenant": tenant, "lifecycle": lifecycle, "limit": limit, "offset": offset},
        )
        return await cur.fetchall()


async def transition(conn: Conn, key: str, action: str) -> str:
    """Apply a lifecycle action; returns the new lifecycle. IllegalTransition (-> 409), PileNotFound."""
    if action not in TRANSITIONS:
        raise ValueError(f"unknown lifecycle action {action!r}; known: {', '.join(TRANSITIONS)}")
    allowed, to = TRANSITIONS[action]
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "SELECT d.lifecycle FROM devices d JOIN charge_points cp ON cp.device_id = d.id"
            " WHERE d.key = %s FOR UPDATE OF d",
            (key,),
        )
        row = await cur.fetchone()
        if row is None:
            raise PileNotFound(f"pile {key!r} not found")
        if row[0] not in allowed:
            raise IllegalTransition(key, action, row[0])
        await cur.execute("UPDATE devices SET lifecycle = %s WHERE key = %s", (to, key))
    return to


async def set_password(conn: Conn, key: str, password: str) -> None:
    if not 8 <= len(password) <= 64:  # OCPP: 16..40 characters recommended; we accept 8..64
        raise ValueError("password must have 8 to 64 characters")
    pw_hash = await asyncio.to_thread(hash_password, password)
    cur = await conn.execute(
        "UPDATE charge_points cp SET password_hash = %s FROM devices d"
        " WHERE d.id = cp.device_id AND d.key = %s",
        (pw_hash, key),
    )
    if cur.rowcount == 0:
        raise PileNotFound(f"pile {key!r} not found")


async def load_auth(conn: Conn, ocpp_id: str) -> PileAuth | None:
    cur = await conn.execute(
        "SELECT d.id, d.key, cp.ocpp_id, s.key, s.id, s.tenant_id, d.lifecycle, cp.password_hash,"
        " cp.max_power_w FROM charge_points cp JOIN devices d ON d.id = cp.device_id"
        " JOIN sites s ON s.id = d.site_id WHERE cp.ocpp_id = %s",
        (ocpp_id,),
    )
    row = await cur.fetchone()
    return PileAuth(*row) if row else None


async def lifecycle_of(conn: Conn, device_id: int) -> str:
    cur = await conn.execute("SELECT lifecycle FROM devices WHERE id = %s", (device_id,))
    row = await cur.fetchone()
    return str(row[0]) if row else "retired"


async def note_connected(conn: Conn, device_id: int, version: str, node: str) -> None:
    await conn.execute(
        "UPDATE charge_points SET ocpp_version = %s, last_connected_at = now(), node = %s"
        " WHERE device_id = %s",
        (version, node, device_id),
    )


def decide(lifecycle: str) -> tuple[BootStatus, str | None]:
    if lifecycle in OPERABLE:
        return BootStatus.ACCEPTED, None
    if lifecycle in ("approved", "built"):
        return BootStatus.PENDING, "operating_before_acceptance"
    if lifecycle == "suspended":
        return BootStatus.PENDING, "operating_while_suspended"
    if lifecycle == "retired":
        return BootStatus.REJECTED, "operating_after_retirement"
    return BootStatus.REJECTED, "operating_before_approval"


async def decide_boot(
    conn: Conn,
    device_id: int,
    *,
    version: str,
    vendor: str | None,
    model: str | None,
    serial_number: str | None,
    firmware_version: str | None,
    reason: str | None = None,
) -> BootDecision:
    """The answer to a BootNotification, per the lifecycle rule; records the boot and any violation
    (one pile: ``decide_boots``, which the server batches)."""
    boot = BootInfo(version, vendor, model, serial_number, firmware_version, reason)
    return (await decide_boots(conn, {device_id: boot}))[device_id]


async def record_violation(
    conn: Conn, device_id: int, kind: str, lifecycle: str | None, details: dict[str, Any]
) -> int:
    """Record a violation; a repeat of the same kind within the hour bumps the open row's attempts."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "UPDATE charging_violations SET attempts = attempts + 1, last_at = now(), details = %s"
            " WHERE id = (SELECT id FROM charging_violations WHERE device_id = %s AND kind = %s"
            " AND last_at > now() - make_interval(secs => %s) ORDER BY last_at DESC LIMIT 1 FOR UPDATE)"
            " RETURNING id",
            (Jsonb(details), device_id, kind, VIOLATION_WINDOW_S),
        )
        row = await cur.fetchone()
        if row is None:
            await cur.execute(
                "INSERT INTO charging_violations (device_id, kind, lifecycle, details)"
                " VALUES (%s, %s, %s, %s)"
                " RETURNING id",
                (device_id, kind, lifecycle, Jsonb(details)),
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def list_violations(
    conn: Conn,
    *,
    pile: str | None = None,
    site: str | None = None,
    tenant: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT v.id, d.key AS pile, s.key AS site, t.key AS tenant, v.kind, v.lifecycle, v.details,"
            " v.at, v.last_at, v.attempts FROM charging_violations v JOIN devices d ON d.id = v.device_id"
            " JOIN sites s ON s.id = d.site_id LEFT JOIN tenants t ON t.id = s.tenant_id"
            " WHERE (%(pile)s::text IS NULL OR d.key = %(pile)s)"
            " AND (%(site)s::text IS NULL OR s.key = %(site)s)"
            " AND (%(tenant)s::text IS NULL OR t.key = %(tenant)s)"
            " ORDER BY v.last_at DESC, v.id DESC LIMIT %(limit)s OFFSET %(offset)s",
            {"pile": pile, "site": site, "tenant": tenant, "limit": limit, "offset": offset},
        )
        return await cur.fetchall()


async def set_connector_status(
    conn: Conn,
    device_id: int,
    evse_id: int,
    connector_id: int,
    status: str,
    error_code: str | None,
    at: datetime | None,
) -> str | None:
    """Store a connector's status; returns the previous one."""
    cur = await conn.execute(
        "WITH old AS (SELECT status FROM charge_point_connectors WHERE device_id = %(d)s AND evse_id = %(e)s"
        " AND connector_id = %(c)s)"
        " INSERT INTO charge_point_connectors AS c"
        " (device_id, evse_id, connector_id, status, error_code, status_at)"
        " VALUES (%(d)s, %(e)s, %(c)s, %(s)s, %(err)s, %(at)s)"
        " ON CONFLICT (device_id, evse_id, connector_id) DO UPDATE SET status = EXCLUDED.status,"
        " error_code = EXCLUDED.error_code, status_at = EXCLUDED.status_at"
        " RETURNING (SELECT status FROM old)",
        {
            "d": device_id,
            "e": evse_id,
            "c": connector_id,
            "s": status,
            "err": error_code,
            "at": at or utcnow(),
        },
    )
    row = await cur.fetchone()
    return row[0] if row else None


# ------------------------------------------------------------------------------------------ id tokens


async def add_token(
    conn: Conn,
    token: str,
    *,
    tenant_key: str | None = None,
    valid_until: datetime | None = None,
    blocked: bool = False,
    parent: str | None = None,
    token_type: str = "ISO14443",
) -> dict[str, Any]:
    """Add or update an id token (idempotent on the token)."""
    if not 1 <= len(token) <= 36:
        raise ValueError("token must have 1 to 36 characters")
    async with conn.cursor(row_factory=dict_row) as cur:
        tenant_id = None
        if tenant_key is not None:
            await cur.execute("SELECT id FROM tenants WHERE key = %s", (tenant_key,))
            row = await cur.fetchone()
            if row is None:
                raise PileNotFound(f"unknown tenant {tenant_key!r}")
            tenant_id = row["id"]
        await cur.execute(
            "INSERT INTO id_tokens (token, token_type, tenant_id, valid_until, blocked, parent)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (token) DO UPDATE SET token_type = EXCLUDED.token_type,"
            " tenant_id = EXCLUDED.tenant_id, valid_until = EXCLUDED.valid_until, blocked = EXCLUDED.blocked,"
            " parent = EXCLUDED.parent",
            (token, token_type, tenant_id, valid_until, blocked, parent),
        )
    return (await list_tokens(conn, token=token))[0]


async def list_tokens(
    conn: Conn, *, tenant: str | None = None, token: str | None = None, limit: int = 1000, offset: int = 0
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT i.token, i.token_type, t.key AS tenant, i.valid_until, i.blocked, i.parent, i.created_at"
            " FROM id_tokens i LEFT JOIN tenants t ON t.id = i.tenant_id"
            " WHERE (%(tenant)s::text IS NULL OR t.key = %(tenant)s)"
            " AND (%(token)s::text IS NULL OR i.token = %(token)s)"
            " ORDER BY i.token LIMIT %(limit)s OFFSET %(offset)s",
            {"tenant": tenant, "token": token, "limit": limit, "offset": offset},
        )
        return await cur.fetchall()


def _judge(
    blocked: bool, valid_until: datetime | None, tenant_id: int | None, pile_tenant: int | None, now: datetime
) -> AuthStatus:
    if blocked:
        return AuthStatus.BLOCKED
    if valid_until is not None and valid_until <= now:
        return AuthStatus.EXPIRED
    if tenant_id is not None and tenant_id != pile_tenant:
        return AuthStatus.WRONG_TENANT
    return AuthStatus.ACCEPTED


async def authorize(conn: Conn, token: str, pile_tenant: int | None) -> AuthResult:
    cur = await conn.execute(
        "SELECT blocked, valid_until, tenant_id, parent FROM id_tokens WHERE token = %s", (token,)
    )
    row = await cur.fetchone()
    if row is None:
        return AuthResult(AuthStatus.UNKNOWN)
    blocked, valid_until, tenant_id, parent = row
    return AuthResult(_judge(blocked, valid_until, tenant_id, pile_tenant, utcnow()), valid_until, parent)


async def local_list(conn: Conn, pile_tenant: int | None) -> list[tuple[str, str, AuthResult]]:
    """The tokens a pile of this tenant may hold in its local authorisation list: (token, type, result)."""
    cur = await conn.execute(
        "SELECT token, token_type, blocked, valid_until, tenant_id, parent FROM id_tokens"
        " WHERE tenant_id IS NULL OR tenant_id = %s ORDER BY token",
        (pile_tenant,),
    )
    now = utcnow()
    return [
        (token, ttype, AuthResult(_judge(blocked, vu, tid, pile_tenant, now), vu, parent))
        for token, ttype, blocked, vu, tid, parent in await cur.fetchall()
    ]


async def load_auths(conn: Conn, ocpp_ids: list[str] | None) -> list[PileAuth]:
    """``load_auth`` for many piles in one query (all piles when ``ocpp_ids`` is None)."""
    cur = await conn.execute(
        "SELECT d.id, d.key, cp.ocpp_id, s.key, s.id, s.tenant_id, d.lifecycle, cp.password_hash,"
        " cp.max_power_w FROM charge_points cp JOIN devices d ON d.id = cp.device_id"
        " JOIN sites s ON s.id = d.site_id WHERE %(ids)s::text[] IS NULL OR cp.ocpp_id = ANY(%(ids)s)",
        {"ids": ocpp_ids},
    )
    return [PileAuth(*row) for row in await cur.fetchall()]


async def set_connector_statuses(
    conn: Conn, rows: list[tuple[int, int, int, str, str | None, datetime]]
) -> None:
    """Store many connectors' statuses in one statement: (device, evse, connector, status, error, at)."""
    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    await conn.execute(
        "INSERT INTO charge_point_connectors AS c"
        " (device_id, evse_id, connector_id, status, error_code, status_at)"
        " SELECT * FROM unnest(%s::int[], %s::int[], %s::int[], %s::text[], %s::text[], %s::timestamptz[])"
        " ON CONFLICT (device_id, evse_id, connector_id) DO UPDATE SET status = EXCLUDED.status,"
        " error_code = EXCLUDED.error_code, status_at = EXCLUDED.status_at",
        [list(c) for c in cols],
    )


async def note_connections(conn: Conn, rows: list[tuple[int, str, str]]) -> dict[int, str]:
    """``note_connected`` for many piles at once: (device, version, node); returns their lifecycles."""
    if not rows:
        return {}
    cols = [list(c) for c in zip(*rows, strict=True)]
    cur = await conn.execute(
        "WITH n AS (SELECT * FROM unnest(%s::int[], %s::text[], %s::text[]) AS n(device_id, version, node))"
        " UPDATE charge_points cp SET ocpp_version = n.version, last_connected_at = now(), node = n.node"
        " FROM n, devices d WHERE cp.device_id = n.device_id AND d.id = n.device_id"
        " RETURNING cp.device_id, d.lifecycle",
        cols,
    )
    return {int(dev): str(lc) for dev, lc in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class BootInfo:
    """What a BootNotification says about the pile (either version)."""

    version: str
    vendor: str | None
    model: str | None
    serial_number: str | None
    firmware_version: str | None
    reason: str | None = None


async def decide_boots(conn: Conn, boots: dict[int, BootInfo]) -> dict[int, BootDecision]:
    """``decide_boot`` for many piles (device id -> boot) in one transaction of a few statements."""
    ids = sorted(boots)
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "SELECT id, lifecycle FROM devices WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,)
        )
        current = {int(i): str(lc) for i, lc in await cur.fetchall()}
        out: dict[int, BootDecision] = {}
        for dev in ids:
            lifecycle = current.get(dev, "retired")
            status, violation = decide(lifecycle)
            if status is BootStatus.ACCEPTED and lifecycle == "accepted":
                lifecycle = "operating"
            out[dev] = BootDecision(status, lifecycle, violation)
        accepted = [d for d in ids if out[d].status is BootStatus.ACCEPTED]
        if accepted:
            await cur.execute(
                "UPDATE devices d SET lifecycle = CASE WHEN d.lifecycle = 'accepted' THEN 'operating'"
                " ELSE d.lifecycle END, vendor = COALESCE(u.vendor, d.vendor),"
                " model = COALESCE(u.model, d.model)"
                " FROM unnest(%s::int[], %s::text[], %s::text[]) AS u(id, vendor, model) WHERE d.id = u.id",
                (accepted, [boots[d].vendor for d in accepted], [boots[d].model for d in accepted]),
            )
        b = [boots[d] for d in ids]
        await cur.execute(
            "UPDATE charge_points cp SET ocpp_version = u.version, vendor = u.vendor, model = u.model,"
            " serial_number = u.serial, firmware_version = u.firmware, last_boot_at = now(),"
            " last_boot_status = u.status FROM unnest(%s::int[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::text[]) AS u(id, version, vendor, model, serial, firmware, status)"
            " WHERE cp.device_id = u.id",
            (
                ids,
                [x.version for x in b],
                [x.vendor for x in b],
                [x.model for x in b],
                [x.serial_number for x in b],
                [x.firmware_version for x in b],
                [out[d].status.value for d in ids],
            ),
        )
        for dev in ids:
            d, x = out[dev], boots[dev]
            if d.violation:
                details = {
                    "message": "BootNotification",
                    "answer": d.status.value,
                    "reason": x.reason,
                    "vendor": x.vendor,
                    "model": x.model,
                    "firmware": x.firmware_version,
                }
                await record_violation(conn, dev, d.violation, d.lifecycle, details)
    return out
