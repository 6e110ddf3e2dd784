"""The VEN's database side: the Lishui events made for a VTN's events (read here; written through
``core.dr.event_writes``, as the API writes them), the scope a VTN's targets name, and the VEN's answers
(migration 0013).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.dr.event_writes import COLUMNS
from core.dr.events import EventScope
from dr_controller.openadr_mapping import Refusal, Selector

__all__ = [
    "Answer",
    "last_answer",
    "live_events",
    "parts_of",
    "record_answer",
    "resolve_scope",
]


async def resolve_scope(conn: psycopg.AsyncConnection[Any], sel: Selector) -> dict[str, Any]:
    """The EventSpec scope fields for what the targets name; unknown names are a refusal."""
    if sel.site_keys:
        cur = await conn.execute("SELECT key, id FROM sites WHERE key = ANY(%s)", (list(sel.site_keys),))
        ids = dict(await cur.fetchall())
        missing = sorted(set(sel.site_keys) - set(ids))
        if missing:
            raise Refusal(f"unknown resources (sites) {missing}")
        return {"scope": EventScope.SITES, "site_ids": sorted(ids.values())}
    if sel.group is not None:
        cur = await conn.execute("SELECT id FROM towns WHERE key = %s", (sel.group,))
        town = await cur.fetchone()
        if town is not None:
            return {"scope": EventScope.TOWN, "town_id": town[0]}
        cur = await conn.execute("SELECT 1 FROM sites WHERE feeder = %s LIMIT 1", (sel.group,))
        if await cur.fetchone() is not None:
            return {"scope": EventScope.FEEDER, "feeder": sel.group}
        raise Refusal(f"group {sel.group!r} is neither a town nor a feeder")
    return {"scope": EventScope.COUNTY}


async def parts_of(
    conn: psycopg.AsyncConnection[Any], source: str, vtn_event_id: str
) -> list[dict[str, Any]]:
    """Every Lishui event made for one VTN event (any state), oldest first."""
    prefix = f"{vtn_event_id}#"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM dr_events WHERE source = %s AND left(external_id, %s) = %s ORDER BY id",
            (source, len(prefix), prefix),
        )
        return await cur.fetchall()


async def live_events(conn: psycopg.AsyncConnection[Any], source: str) -> list[dict[str, Any]]:
    """A VTN's events that are active now."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM dr_events WHERE source = %s AND state = 'active' ORDER BY id", (source,)
        )
        return await cur.fetchall()


@dataclass(frozen=True, slots=True)
class Answer:
    modification_number: int
    opt: str
    opt_reason: str | None
    reason: str | None
    dr_event_ids: list[int]


async def last_answer(conn: psycopg.AsyncConnection[Any], vtn_id: str, event_id: str) -> Answer | None:
    cur = await conn.execute(
        "SELECT modification_number, opt, opt_reason, reason, dr_event_ids FROM openadr_responses"
        " WHERE vtn_id = %s AND event_id = %s ORDER BY modification_number DESC LIMIT 1",
        (vtn_id, event_id),
    )
    row = await cur.fetchone()
    return None if row is None else Answer(row[0], row[1], row[2], row[3], list(row[4]))


def _plain(value: Any) -> Any:
    """openleadr's parsed message as JSON: times as ISO 8601, durations in seconds."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity; a malformed payload is kept as written
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


async def record_answer(
    conn: psycopg.AsyncConnection[Any],
    vtn_id: str,
    event: Mapping[str, Any],
    opt: str,
    *,
    opt_reason: str | None = None,
    reason: str | None = None,
    dr_event_ids: Iterable[int] = (),
) -> None:
    descriptor = event["event_descriptor"]
    await conn.execute(
        "INSERT INTO openadr_responses (vtn_id, event_id, modification_number, event_status, opt, opt_reason,"
        " reason, dr_event_ids, received) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (vtn_id, event_id, modification_number) DO UPDATE SET event_status ="
        " EXCLUDED.event_status, opt = EXCLUDED.opt, opt_reason = EXCLUDED.opt_reason,"
        " reason = EXCLUDED.reason, dr_event_ids = EXCLUDED.dr_event_ids, received = EXCLUDED.received,"
        " answered_at = now()",
        (
            vtn_id,
            str(descriptor["event_id"]),
            int(descriptor.get("modification_number") or 0),
            str(descriptor.get("event_status") or "none"),
            opt,
            opt_reason,
            reason,
            sorted(dr_event_ids),
            Jsonb(_plain(event)),
        ),
    )
