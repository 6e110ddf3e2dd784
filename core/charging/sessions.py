"""Charging transactions (version-free), persisted so they survive restarts and offline periods.

Idempotency, so that messages a pile replays after an offline period are applied once and in order:
- 1.6 StartTransaction: keyed by (pile, connector, timestamp, meterStart); a replay gets the same
  transactionId;
- 1.6 StopTransaction of an ended transaction: answered, totals unchanged;
- 2.0.1 TransactionEvent: (transaction, seqNo) is recorded; a replayed seqNo is answered, not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class TxOutcome:
    id: int
    ocpp_tx_id: str
    started: bool = False  # this message created/started the transaction
    ended: bool = False  # this message ended it
    duplicate: bool = False  # a replay: nothing changed
    energy_wh: float | None = None
    evse_id: int | None = None
    id_token: str | None = None


async def start_16(
    conn: Conn, device_id: int, connector_id: int, id_tag: str, meter_start: float, timestamp: datetime
) -> TxOutcome:
    key = f"{connector_id}|{timestamp.isoformat()}|{meter_start}"
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO charging_transactions (id, ocpp_tx_id, device_id, evse_id, connector_id, start_key,"
            " id_token, meter_start_wh, meter_last_wh, started_at)"
            " SELECT n, n::text, %s, %s, %s, %s, %s, %s, %s, %s"
            " FROM (SELECT nextval('charging_transactions_id_seq')::integer AS n) s"
            " ON CONFLICT (device_id, start_key) DO NOTHING RETURNING id",
            (device_id, connector_id, connector_id, key, id_tag, meter_start, meter_start, timestamp),
        )
        row = await cur.fetchone()
        if row is not None:
            return TxOutcome(row[0], str(row[0]), started=True, evse_id=connector_id, id_token=id_tag)
        cur = await conn.execute(
            "SELECT id FROM charging_transactions WHERE device_id = %s AND start_key = %s", (device_id, key)
        )
        row = await cur.fetchone()
        assert row is not None
        return TxOutcome(row[0], str(row[0]), duplicate=True, evse_id=connector_id, id_token=id_tag)


async def stop_16(
    conn: Conn,
    device_id: int,
    transaction_id: int,
    meter_stop: float,
    timestamp: datetime,
    reason: str | None,
) -> TxOutcome | None:
    """None for a transaction this pile never started here."""
    cur = await conn.execute(
        "UPDATE charging_transactions SET status = 'ended', meter_stop_wh = %s, meter_last_wh = %s,"
        " energy_wh = %s - meter_start_wh, stopped_at = %s, stop_reason = %s, updated_at = now()"
        " WHERE id = %s AND device_id = %s AND status = 'active'"
        " RETURNING id, energy_wh, evse_id, id_token",
        (meter_stop, meter_stop, meter_stop, timestamp, reason or "Local", transaction_id, device_id),
    )
    row = await cur.fetchone()
    if row is not None:
        return TxOutcome(row[0], str(row[0]), ended=True, energy_wh=row[1], evse_id=row[2], id_token=row[3])
    cur = await conn.execute(
        "SELECT id, energy_wh, evse_id, id_token FROM charging_transactions WHERE id = %s AND device_id = %s",
        (transaction_id, device_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return TxOutcome(row[0], str(row[0]), duplicate=True, energy_wh=row[1], evse_id=row[2], id_token=row[3])


async def meter_16(conn: Conn, device_id: int, transaction_id: int, energy_wh: float) -> None:
    await conn.execute(
        "UPDATE charging_transactions SET meter_last_wh = %s, updated_at = now()"
        " WHERE id = %s AND device_id = %s AND status = 'active'",
        (energy_wh, transaction_id, device_id),
    )


async def event_201(
    conn: Conn,
    device_id: int,
    *,
    event_type: str,
    tx_id: str,
    seq_no: int,
    timestamp: datetime,
    trigger_reason: str,
    evse_id: int | None,
    connector_id: int | None,
    id_token: str | None,
    energy_wh: float | None,
    stopped_reason: str | None,
) -> TxOutcome:
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO charging_transactions (ocpp_tx_id, device_id, evse_id, connector_id, id_token,"
            " meter_start_wh, meter_last_wh, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (device_id, ocpp_tx_id) DO NOTHING RETURNING id",
            (tx_id, device_id, evse_id, connector_id, id_token, energy_wh, energy_wh, timestamp),
        )
        created = await cur.fetchone()
        cur = await conn.execute(
            "SELECT id, status, evse_id, id_token FROM charging_transactions"
            " WHERE device_id = %s AND ocpp_tx_id = %s FOR UPDATE",
            (device_id, tx_id),
        )
        row = await cur.fetchone()
        assert row is not None
        pk, status, stored_evse, stored_token = row
        cur = await conn.execute(
            "INSERT INTO charging_transaction_events (transaction_id, seq_no, event_type, trigger_reason, ts)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            (pk, seq_no, event_type, trigger_reason, timestamp),
        )
        if await cur.fetchone() is None:
            return TxOutcome(pk, tx_id, duplicate=True, evse_id=stored_evse, id_token=stored_token)
        await conn.execute(
            "UPDATE charging_transactions SET evse_id = COALESCE(evse_id, %(evse)s),"
            " connector_id = COALESCE(connector_id, %(conn)s), id_token = COALESCE(%(token)s, id_token),"
            " meter_start_wh = COALESCE(meter_start_wh, %(wh)s),"
            " meter_last_wh = CASE WHEN status = 'active' THEN COALESCE(%(wh)s, meter_last_wh)"
            " ELSE meter_last_wh END, started_at = LEAST(started_at, %(ts)s),"
            " last_seq_no = GREATEST(last_seq_no, %(seq)s), updated_at = now()"
            " WHERE id = %(id)s",
            {
                "evse": evse_id,
                "conn": connector_id,
                "token": id_token,
                "wh": energy_wh,
                "ts": timestamp,
                "seq": seq_no,
                "id": pk,
            },
        )
        ended = False
        energy = None
        if event_type == "Ended" and status == "active":
            cur = await conn.execute(
                "UPDATE charging_transactions SET status = 'ended', stopped_at = %s, stop_reason = %s,"
                " meter_stop_wh = COALESCE(%s, meter_last_wh),"
                " energy_wh = COALESCE(%s, meter_last_wh) - meter_start_wh WHERE id = %s RETURNING energy_wh",
                (timestamp, stopped_reason or "Local", energy_wh, energy_wh, pk),
            )
            got = await cur.fetchone()
            energy = got[0] if got else None
            ended = True
        return TxOutcome(
            pk,
            tx_id,
            started=created is not None,
            ended=ended,
            energy_wh=energy,
            evse_id=evse_id if evse_id is not None else stored_evse,
            id_token=id_token or stored_token,
        )


async def list_transactions(
    conn: Conn,
    *,
    pile: str | None = None,
    site: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT t.id, d.key AS pile, s.key AS site, t.evse_id, t.connector_id, t.ocpp_tx_id, t.id_token,"
            " t.meter_start_wh, t.meter_last_wh, t.meter_stop_wh, t.energy_wh, t.started_at, t.stopped_at,"
            " EXTRACT(EPOCH FROM (t.stopped_at - t.started_at))::double precision AS duration_s,"
            " t.stop_reason, t.status FROM charging_transactions t JOIN devices d ON d.id = t.device_id"
            " JOIN sites s ON s.id = d.site_id"
            " WHERE (%(pile)s::text IS NULL OR d.key = %(pile)s)"
            " AND (%(site)s::text IS NULL OR s.key = %(site)s)"
            " AND (%(status)s::text IS NULL OR t.status = %(status)s)"
            " ORDER BY t.started_at DESC NULLS LAST, t.id DESC LIMIT %(limit)s OFFSET %(offset)s",
            {"pile": pile, "site": site, "status": status, "limit": limit, "offset": offset},
        )
        return await cur.fetchall()
