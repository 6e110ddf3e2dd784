"""The controller's database side: event transitions (audited by migration 0010's triggers) and the
control loop's records (migration 0011). Every function runs on an autocommit connection; a transition
and its actor go together in one transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.dr.event_writes import EVENT_FIELDS
from core.dr.events import EventState

__all__ = [
    "EventRecord",
    "Reference",
    "active_events",
    "cancel_missed",
    "due_events",
    "event_by_id",
    "events_to_restore",
    "insert_dispatches",
    "load_references",
    "load_runtime",
    "record_cycle",
    "record_result",
    "save_activation",
    "touched_resources",
    "transition",
]

EVENT_COLUMNS = f"id, {', '.join(EVENT_FIELDS)}, state, version"


@dataclass(frozen=True, slots=True)
class EventRecord:
    row: dict[str, Any]

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def starts_at(self) -> datetime:
        value: datetime = self.row["starts_at"]
        return value

    @property
    def ends_at(self) -> datetime:
        value: datetime = self.row["ends_at"]
        return value


@dataclass(frozen=True, slots=True)
class Reference:
    resource_id: str
    device_id: int | None
    kind: str
    produces: bool
    reference_kw: float


async def _events(
    conn: psycopg.AsyncConnection[Any], where: str, params: tuple[Any, ...]
) -> list[EventRecord]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {EVENT_COLUMNS} FROM dr_events WHERE {where} ORDER BY starts_at, id", params
        )
        return [EventRecord(row) for row in await cur.fetchall()]


async def due_events(conn: psycopg.AsyncConnection[Any], now: datetime) -> list[EventRecord]:
    """Scheduled events whose window has begun and not ended."""
    return await _events(conn, "state = 'scheduled' AND starts_at <= %s AND ends_at > %s", (now, now))


async def event_by_id(conn: psycopg.AsyncConnection[Any], event_id: int) -> EventRecord:
    found = await _events(conn, "id = %s", (event_id,))
    if not found:
        raise LookupError(f"no demand-response event {event_id}")
    return found[0]


async def active_events(conn: psycopg.AsyncConnection[Any]) -> list[EventRecord]:
    return await _events(conn, "state = 'active'", ())


async def events_to_restore(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """Events that ran (have a runtime) and are over (completed or cancelled) but were not restored."""
    cur = await conn.execute(
        "SELECT r.event_id FROM dr_event_runtime r JOIN dr_events e ON e.id = r.event_id"
        " WHERE r.restored_at IS NULL AND e.state IN ('completed', 'cancelled') ORDER BY r.event_id"
    )
    return [int(row[0]) for row in await cur.fetchall()]


async def transition(
    conn: psycopg.AsyncConnection[Any],
    event_id: int,
    old: EventState,
    new: EventState,
    actor: str,
    reason: str | None = None,
) -> bool:
    """Move an event from ``old`` to ``new``; False if it was no longer in ``old`` (someone else moved it)."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('lishui.actor', %s, true)", (actor,))
        cur = await conn.execute(
            "UPDATE dr_events SET state = %s, reason = coalesce(%s, reason) WHERE id = %s AND state = %s",
            (new.value, reason, event_id, old.value),
        )
        return cur.rowcount == 1


async def cancel_missed(conn: psycopg.AsyncConnection[Any], now: datetime, actor: str) -> list[int]:
    """Scheduled events whose whole window passed with no controller running: cancelled, with why."""
    missed = await _events(conn, "state = 'scheduled' AND ends_at <= %s", (now,))
    done = []
    for event in missed:
        reason = "window passed before any controller activated it"
        if await transition(conn, event.id, EventState.SCHEDULED, EventState.CANCELLED, actor, reason):
            done.append(event.id)
    return done


async def save_activation(
    conn: psycopg.AsyncConnection[Any],
    event_id: int,
    controller: str,
    activated_at: datetime,
    baseline_used: str,
    baseline_note: str | None,
    references: Iterable[Reference],
) -> None:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO dr_event_runtime (event_id, baseline_used, baseline_note, controller, activated_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (event_id, baseline_used, baseline_note, controller, activated_at),
        )
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO dr_references (event_id, resource_id, device_id, kind, produces, reference_kw)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (event_id, r.resource_id, r.device_id, r.kind, r.produces, r.reference_kw)
                    for r in references
                ],
            )


async def load_runtime(conn: psycopg.AsyncConnection[Any], event_id: int) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM dr_event_runtime WHERE event_id = %s", (event_id,))
        return await cur.fetchone()


async def load_references(conn: psycopg.AsyncConnection[Any], event_id: int) -> list[Reference]:
    cur = await conn.execute(
        "SELECT resource_id, device_id, kind, produces, reference_kw FROM dr_references WHERE event_id = %s",
        (event_id,),
    )
    return [Reference(*row) for row in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class DispatchRow:
    event_id: int
    cycle: int
    at: datetime
    resource_id: str
    device_id: int | None
    site: str
    target: str
    op: str
    args: Mapping[str, Any]
    dispatch_kw: float
    restore: bool
    command_id: str
    controller: str


async def insert_dispatches(conn: psycopg.AsyncConnection[Any], rows: Iterable[DispatchRow]) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO dr_dispatches (event_id, cycle, at, resource_id, device_id, site, target, op, args,"
            " dispatch_kw, restore, command_id, controller)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    r.event_id,
                    r.cycle,
                    r.at,
                    r.resource_id,
                    r.device_id,
                    r.site,
                    r.target,
                    r.op,
                    Jsonb(dict(r.args)),
                    r.dispatch_kw,
                    r.restore,
                    r.command_id,
                    r.controller,
                )
                for r in rows
            ],
        )


async def record_result(
    conn: psycopg.AsyncConnection[Any], command_id: str, status: str, detail: str | None
) -> None:
    await conn.execute(
        "UPDATE dr_dispatches SET status = %s, detail = %s, answered_at = now() WHERE command_id = %s",
        (status, detail, command_id),
    )


async def touched_resources(conn: psycopg.AsyncConnection[Any], event_id: int) -> list[str]:
    """Resources this event sent a non-restore command to (whoever the controller was)."""
    cur = await conn.execute(
        "SELECT DISTINCT resource_id FROM dr_dispatches WHERE event_id = %s AND NOT restore ORDER BY 1",
        (event_id,),
    )
    return [str(row[0]) for row in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class CycleRecord:
    event_id: int
    ts: datetime
    cycle: int
    target_kw: float
    delivered_kw: float
    allocated_kw: float
    baseline_kw: float | None
    controller: str
    per_resource: Mapping[str, tuple[float, float]]  # resource id -> (measured kW, dispatch kW)


async def record_cycle(conn: psycopg.AsyncConnection[Any], rec: CycleRecord) -> None:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO dr_measurements (event_id, ts, cycle, target_kw, delivered_kw, allocated_kw,"
            " baseline_kw, controller) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                rec.event_id,
                rec.ts,
                rec.cycle,
                rec.target_kw,
                rec.delivered_kw,
                rec.allocated_kw,
                rec.baseline_kw,
                rec.controller,
            ),
        )
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO dr_resource_measurements (event_id, ts, resource_id, measured_kw, dispatch_kw)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(rec.event_id, rec.ts, rid, m, d) for rid, (m, d) in rec.per_resource.items()],
            )
        await conn.execute(
            "UPDATE dr_event_runtime SET last_cycle_at = %s, cycles = %s, allocated_kw = %s, controller = %s"
            " WHERE event_id = %s",
            (rec.ts, rec.cycle, rec.allocated_kw, rec.controller, rec.event_id),
        )


async def mark_restored(conn: psycopg.AsyncConnection[Any], event_id: int, at: datetime) -> None:
    await conn.execute("UPDATE dr_event_runtime SET restored_at = %s WHERE event_id = %s", (at, event_id))
