"""Site-level charging limits (the demand-response lever), version-free.

``Command(op="set_site_charging_limit", args={"watts": W, "valid_until": ISO time})`` (or ``hold_s``
instead of ``valid_until``) on ``topic(site, SITE_TARGET, Channel.CMD)`` reaches one node through a
shared subscription; that node stores the limit in ``site_charging_limits``. A trigger NOTIFYs every node
(``lishui_charging_allocation``, payload = site id) when a limit or a session changes; each node then
computes the division from the database and sends the piles *it holds* their share as a pile-wide
profile (1.6 ChargePointMaxProfile on connector 0, 2.0.1 ChargingStationMaxProfile on EVSE 0) whose
``validTo`` is the limit's validity, so piles fall back by themselves when nobody renews the limit.
``clear_site_charging_limit`` deletes it and clears the profiles.

Division: every active session gets an equal share, capped by its pile's maximum power (divided among
that pile's sessions); what a capped session cannot use is shared among the others (water filling).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from core.payloads import Command, CommandResult, CommandStatus, utcnow
from ocpp_server import metrics
from ocpp_server.commands import site_profile_id

if TYPE_CHECKING:
    from ocpp_server.pile import Context

log = logging.getLogger(__name__)
CHANNEL = "lishui_charging_allocation"
Conn = psycopg.AsyncConnection[Any]


def divide(limit_w: float, sessions: Mapping[int, tuple[int, float | None]]) -> dict[int, float]:
    """``sessions``: device_id -> (active sessions, pile max W or None). Returns device_id -> watts."""
    # one entry per session, capped by the pile's max shared among its sessions
    caps = [
        (dev, (cap / n) if cap is not None else float("inf"))
        for dev, (n, cap) in sessions.items()
        for _ in range(n)
    ]
    caps.sort(key=lambda c: c[1])
    out: dict[int, float] = {dev: 0.0 for dev in sessions}
    remaining = max(limit_w, 0.0)
    for i, (dev, cap) in enumerate(caps):
        share = min(cap, remaining / (len(caps) - i))
        out[dev] += share
        remaining -= share
    return out


@dataclass(frozen=True, slots=True)
class Allocation:
    site_id: int
    watts: float | None  # None: no limit in force
    valid_until: datetime | None
    shares: dict[int, float]


async def allocation(conn: Conn, site_id: int) -> Allocation:
    cur = await conn.execute(
        "SELECT watts, valid_until FROM site_charging_limits WHERE site_id = %s AND valid_until > now()",
        (site_id,),
    )
    limit = await cur.fetchone()
    if limit is None:
        return Allocation(site_id, None, None, {})
    cur = await conn.execute(
        "SELECT t.device_id, count(*)::int, cp.max_power_w FROM charging_transactions t"
        " JOIN devices d ON d.id = t.device_id JOIN charge_points cp ON cp.device_id = t.device_id"
        " WHERE d.site_id = %s AND t.status = 'active' GROUP BY t.device_id, cp.max_power_w",
        (site_id,),
    )
    sessions = {dev: (n, cap) for dev, n, cap in await cur.fetchall()}
    return Allocation(site_id, float(limit[0]), limit[1], divide(float(limit[0]), sessions))


async def handle_site_command(ctx: Context, site_key: str, cmd: Command) -> CommandResult:
    now = utcnow()
    if cmd.expires_at is not None and cmd.expires_at <= now:
        return CommandResult(id=cmd.id, status=CommandStatus.EXPIRED)
    if cmd.op == "clear_site_charging_limit":
        async with ctx.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM site_charging_limits WHERE site_id = (SELECT id FROM sites WHERE key = %s)",
                (site_key,),
            )
        return CommandResult(id=cmd.id, status=CommandStatus.ACCEPTED, detail="cleared")
    if cmd.op != "set_site_charging_limit":
        return CommandResult(id=cmd.id, status=CommandStatus.REJECTED, detail=f"unknown site op {cmd.op!r}")
    try:
        watts = float(cmd.args["watts"])
        if not 0 <= watts < 1e9:
            raise ValueError("watts out of range")
        if "valid_until" in cmd.args:
            until = datetime.fromisoformat(str(cmd.args["valid_until"]).replace("Z", "+00:00"))
            if until.tzinfo is None:
                raise ValueError("valid_until needs a timezone")
        elif cmd.hold_s or "hold_s" in cmd.args:
            until = now + timedelta(seconds=float(cmd.hold_s or cmd.args["hold_s"]))
        else:
            raise ValueError("valid_until or hold_s required: every limit carries a validity")
        if until <= now:
            raise ValueError("valid_until is in the past")
    except (KeyError, TypeError, ValueError) as err:
        return CommandResult(id=cmd.id, status=CommandStatus.REJECTED, detail=f"invalid args: {err}")
    async with ctx.pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO site_charging_limits (site_id, watts, valid_until, command_id, requested_by)"
            " SELECT id, %s, %s, %s, %s FROM sites WHERE key = %s"
            " ON CONFLICT (site_id) DO UPDATE SET watts = EXCLUDED.watts, valid_until = EXCLUDED.valid_until,"
            " command_id = EXCLUDED.command_id, requested_by = EXCLUDED.requested_by, set_at = now()"
            " RETURNING site_id",
            (watts, until, cmd.id, cmd.requested_by, site_key),
        )
        row = await cur.fetchone()
        if row is None:
            return CommandResult(
                id=cmd.id, status=CommandStatus.REJECTED, detail=f"unknown site {site_key!r}"
            )
        alloc = await allocation(conn, row[0])
    return CommandResult(
        id=cmd.id,
        status=CommandStatus.ACCEPTED,
        response={
            "watts": watts,
            "valid_until": until.isoformat(),
            "sessions": len(alloc.shares),
            "shares_w": {str(k): v for k, v in alloc.shares.items()},
        },
    )


class Allocator:
    """Re-divides sites' limits among the sessions of the piles this node holds."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        # device_id -> (watts, valid_until) last sent, so an unchanged share is not re-sent
        self._sent: dict[int, tuple[float, datetime] | None] = {}

    def mark(self, site_id: int) -> None:
        self._dirty.add(site_id)
        self._wake.set()

    async def listen(self) -> None:
        """LISTEN for changes; on (re)connect every site with a limit is re-checked."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.ctx.settings.db.dsn, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    cur = await conn.execute("SELECT site_id FROM site_charging_limits")
                    for (site_id,) in await cur.fetchall():
                        self.mark(site_id)
                    async for note in conn.notifies():
                        try:
                            self.mark(int(note.payload))
                        except ValueError:
                            pass
            except psycopg.OperationalError as err:
                log.warning("allocation listener lost the database", extra={"error": str(err)})
                await asyncio.sleep(2.0)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            sites, self._dirty = self._dirty, set()
            for site_id in sites:
                try:
                    await self.apply(site_id)
                except Exception:
                    log.exception("allocation failed", extra={"site_id": site_id})

    async def apply(self, site_id: int) -> None:
        async with self.ctx.pool.connection() as conn:
            alloc = await allocation(conn, site_id)
        held = [p for p in list(self.ctx.hub.by_key.values()) if p.auth.site_id == site_id]
        for pile in held:
            dev = pile.auth.device_id
            if alloc.watts is None or alloc.valid_until is None:
                if self._sent.get(dev) is not None:
                    self._sent[dev] = None
                    pile.spawn(self._clear(pile), "clear-site-limit")
                continue
            share = alloc.shares.get(dev)
            if share is None:
                continue
            target = (round(share, 1), alloc.valid_until)
            if self._sent.get(dev) == target:
                continue
            self._sent[dev] = target
            pile.spawn(self._send(pile, target[0], alloc.valid_until), "site-limit")

    async def _send(self, pile: Any, watts: float, until: datetime) -> None:
        try:
            answer = await pile.apply_limit(watts, until)
            log.info("site limit share sent", extra={"pile": pile.key, "watts": watts, "answer": answer})
            metrics.COMMANDS.labels("site_limit_share", str(answer.get("status", "?")).lower()).inc()
        except Exception as err:
            self._sent.pop(pile.auth.device_id, None)
            log.warning("site limit share not delivered", extra={"pile": pile.key, "error": repr(err)})

    async def _clear(self, pile: Any) -> None:
        try:
            key = "id" if pile.version == "1.6" else "chargingProfileId"
            await pile.call_action("ClearChargingProfile", {key: site_profile_id()})
        except Exception as err:
            log.warning("site limit clear not delivered", extra={"pile": pile.key, "error": repr(err)})
