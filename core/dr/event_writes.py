"""Writing demand-response events (table ``dr_events``, migration 0010): create, amend and cancel.

The one place both writers go through: the API (the grid company's requests) and the OpenADR VEN (a
VTN's). Each change is one transaction with its actor set (``lishui.actor``) for the audit trigger.
``values`` are the writable columns, ``EVENT_FIELDS`` (``core.dr.events.EventSpec``'s fields,
validated by the caller); the database's checks and lifecycle trigger still refuse what makes no sense,
as psycopg errors for the caller to answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import psycopg
from psycopg.rows import dict_row

__all__ = ["COLUMNS", "EVENT_FIELDS", "amend_event", "cancel_event", "create_event"]

EVENT_FIELDS = (
    "kind",
    "target_kw",
    "cap_kw",
    "floor_kw",
    "starts_at",
    "ends_at",
    "notice",
    "scope",
    "town_id",
    "feeder",
    "site_ids",
    "baseline",
)
# Every column of an event, as the writers return it.
COLUMNS = (
    f"id, {', '.join(EVENT_FIELDS)}, state, reason, source, external_id, version, created_at, updated_at"
)


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    if set(values) != set(EVENT_FIELDS):
        raise ValueError(f"event values must be exactly {EVENT_FIELDS}, not {sorted(values)}")
    return {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}


async def _write(
    conn: psycopg.AsyncConnection[Any], actor: str, sql: str, params: Mapping[str, Any]
) -> dict[str, Any] | None:
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT set_config('lishui.actor', %s, true)", (actor,))
        await cur.execute(sql, params)
        return await cur.fetchone()


async def create_event(
    conn: psycopg.AsyncConnection[Any],
    values: Mapping[str, Any],
    actor: str,
    *,
    source: str,
    external_id: str | None = None,
) -> dict[str, Any]:
    """A new scheduled event; ``source`` is 'api' or 'openadr:{vtn}' (with the VTN's id as
    ``external_id``)."""
    columns = (*EVENT_FIELDS, "source", "external_id")
    row = await _write(
        conn,
        actor,
        f"INSERT INTO dr_events ({', '.join(columns)}) VALUES ({', '.join(f'%({c})s' for c in columns)})"
        f" RETURNING {COLUMNS}",
        _params(values) | {"source": source, "external_id": external_id},
    )
    assert row is not None  # an INSERT without conflict clause returns its row or raises
    return row


async def amend_event(
    conn: psycopg.AsyncConnection[Any], event_id: int, values: Mapping[str, Any], actor: str
) -> dict[str, Any] | None:
    """Replace a scheduled event's request; None if there is no such event or it is no longer
    scheduled."""
    return await _write(
        conn,
        actor,
        f"UPDATE dr_events SET {', '.join(f'{f} = %({f})s' for f in EVENT_FIELDS)}"
        f" WHERE id = %(id)s AND state = 'scheduled' RETURNING {COLUMNS}",
        _params(values) | {"id": event_id},
    )


async def cancel_event(
    conn: psycopg.AsyncConnection[Any], event_id: int, actor: str, reason: str
) -> dict[str, Any] | None:
    """Scheduled or active -> cancelled (the controller restores what an active one touched); None if
    there is no such event or it is already over."""
    return await _write(
        conn,
        actor,
        "UPDATE dr_events SET state = 'cancelled', reason = %(reason)s"
        f" WHERE id = %(id)s AND state IN ('scheduled', 'active') RETURNING {COLUMNS}",
        {"id": event_id, "reason": reason},
    )
