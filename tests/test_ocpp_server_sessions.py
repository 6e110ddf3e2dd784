"""OCPP server, session side, with the ``ocpp`` library's own charge points over real websockets: the
session flow for both versions (telemetry on MQTT and in TimescaleDB via ingest), idempotent replays,
a restart in mid-session, operator commands over MQTT, and a site limit divided among sessions."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import psycopg
import pytest
import pytest_asyncio
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from psycopg import sql

from core import db
from core import mqtt as core_mqtt
from core.charging import registry
from core.payloads import Command, encode
from core.registry import upsert_site, upsert_tenant
from core.settings import Settings
from core.topics import SITE_TARGET, Channel, topic
from ocpp_server.settings import OcppSettings
from ocpp_server.testing import Recorder, basic_auth, recording, running_server

PW = "session-password-1"
SITE = "sess-site"


def now_iso(delta_s: float = 0) -> str:
    return (
        (datetime.now(UTC) + timedelta(seconds=delta_s))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class Client16(CP16):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.profiles: list[dict[str, Any]] = []
        self.remote_starts: list[str] = []

    @on(A16.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **kw: Any) -> r16.RemoteStartTransaction:
        self.remote_starts.append(id_tag)
        return r16.RemoteStartTransaction(status="Accepted")

    @on(A16.set_charging_profile)
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **kw: Any) -> Any:
        self.profiles.append(cs_charging_profiles)
        return r16.SetChargingProfile(status="Accepted")

    @on(A16.clear_charging_profile)
    def on_clear_profile(self, **kw: Any) -> r16.ClearChargingProfile:
        return r16.ClearChargingProfile(status="Accepted")


class Client201(CP201):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.profiles: list[dict[str, Any]] = []

    @on(A201.request_start_transaction)
    def on_remote_start(self, id_token: dict[str, Any], remote_start_id: int, **kw: Any) -> Any:
        return r201.RequestStartTransaction(status="Accepted")

    @on(A201.set_charging_profile)
    def on_set_profile(self, evse_id: int, charging_profile: dict[str, Any], **kw: Any) -> Any:
        self.profiles.append(charging_profile)
        return r201.SetChargingProfile(status="Accepted")

    @on(A201.clear_charging_profile)
    def on_clear_profile(self, **kw: Any) -> r201.ClearChargingProfile:
        return r201.ClearChargingProfile(status="Accepted")


@contextlib.asynccontextmanager
async def pile(port: int, ocpp_id: str, version: str) -> AsyncIterator[Any]:
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/{ocpp_id}",
        subprotocols=[version],  # type: ignore[list-item]
        additional_headers=basic_auth(ocpp_id, PW),
    ) as ws:
        cp = (Client16 if version == "ocpp1.6" else Client201)(ocpp_id, ws, response_timeout=10)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@pytest_asyncio.fixture(scope="module")
async def seeded(db_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await upsert_tenant(conn, "sess-op", "Session operator", "operator")
        await upsert_tenant(conn, "other-op", "Other operator", "operator")
        await upsert_site(conn, SITE, "Session site", tenant_key="sess-op")
        await upsert_site(conn, "limit-site", "Limit site", tenant_key="sess-op")
        for key, site, cap in [
            ("sess-16", SITE, 22000),
            ("sess-201", SITE, 22000),
            ("sess-restart", SITE, 22000),
            ("lim-a", "limit-site", 7000),
            ("lim-b", "limit-site", 22000),
        ]:
            await registry.add_pile(
                conn, key, site, lifecycle="operating", password=PW, max_power_w=cap, connectors=1
            )
        await registry.add_token(conn, "TOK1", tenant_key="sess-op")
        await registry.add_token(conn, "TOKBLOCK", blocked=True)
        await registry.add_token(conn, "TOKOLD", valid_until=datetime(2020, 1, 1, tzinfo=UTC))
        await registry.add_token(conn, "TOKOTHER", tenant_key="other-op")


@pytest_asyncio.fixture(scope="module")
async def port(settings: Settings, seeded: None) -> AsyncIterator[int]:
    cfg = OcppSettings(node="sess-node", call_timeout_s=3, ping_interval_s=0)
    async with running_server(settings, cfg) as p:
        yield p


@pytest_asyncio.fixture
async def rec(settings: Settings) -> AsyncIterator[Recorder]:
    async with recording(settings, f"{settings.topic_root}/v1/#") as r:
        yield r


async def _tx(db_dsn: str, key: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        from core.charging.sessions import list_transactions

        return await list_transactions(conn, pile=key)


async def test_session_flow_16(port: int, rec: Recorder, settings: Settings, db_dsn: str) -> None:
    root = settings.topic_root
    async with pile(port, "sess-16", "ocpp1.6") as cp:
        boot = await cp.call(c16.BootNotification(charge_point_vendor="Acme", charge_point_model="AC22"))
        assert boot.status == "Accepted" and boot.interval == 300
        await rec.wait_for(
            lambda t, p: t == topic(SITE, "sess-16", Channel.STATUS, root) and p["state"] == "online"
        )
        await cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
        for token, expected in [
            ("TOK1", "Accepted"),
            ("TOKBLOCK", "Blocked"),
            ("TOKOLD", "Expired"),
            ("NOPE", "Invalid"),
            ("TOKOTHER", "Invalid"),
        ]:
            auth = await cp.call(c16.Authorize(id_tag=token))
            assert auth.id_tag_info["status"] == expected, token
        ts = now_iso(-60)
        start = await cp.call(
            c16.StartTransaction(connector_id=1, id_tag="TOK1", meter_start=1000, timestamp=ts)
        )
        assert start.id_tag_info["status"] == "Accepted"
        replay = await cp.call(
            c16.StartTransaction(connector_id=1, id_tag="TOK1", meter_start=1000, timestamp=ts)
        )
        assert replay.transaction_id == start.transaction_id
        await cp.call(
            c16.MeterValues(
                connector_id=1,
                transaction_id=start.transaction_id,
                meter_value=[
                    {
                        "timestamp": now_iso(-30),
                        "sampledValue": [
                            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
                            {"value": "2.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                            {"value": "10", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                            {"value": "11", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                            {"value": "230", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                            {"value": "232", "measurand": "Voltage", "phase": "L2-N", "unit": "V"},
                            {"value": "55", "measurand": "SoC", "location": "EV", "unit": "Percent"},
                            {"value": "32", "measurand": "Current.Offered", "unit": "A"},
                            {
                                "value": "41",
                                "measurand": "Temperature",
                                "location": "Body",
                                "unit": "Celsius",
                            },
                        ],
                    }
                ],
            )
        )
        tele = await rec.wait_for(lambda t, p: t == topic(SITE, "sess-16", Channel.TELEMETRY, root))
        values = tele[0][1]["samples"][0]["values"]
        assert values == {
            "active_power_w": 7200.0,
            "energy_import_wh": 2500.0,
            "current_a": 21.0,
            "voltage_v": 231.0,
            "soc_pct": 55.0,
            "current_offered_a": 32.0,
            "temperature_c": 41.0,
        }
        stop = c16.StopTransaction(
            meter_stop=5000,
            timestamp=now_iso(),
            transaction_id=start.transaction_id,
            reason="EVDisconnected",
            id_tag="TOK1",
        )
        assert (await cp.call(stop)).id_tag_info["status"] == "Accepted"
        assert (await cp.call(stop)).id_tag_info["status"] == "Accepted"  # a replay: answered, not counted
    [tx] = await _tx(db_dsn, "sess-16")
    assert tx["status"] == "ended" and tx["energy_wh"] == 4000 and tx["stop_reason"] == "EVDisconnected"
    assert tx["duration_s"] == pytest.approx(60, abs=2)
    events = await rec.wait_for(
        lambda t, p: (
            t == topic(SITE, "sess-16", Channel.EVENT, root) and p["kind"].startswith("transaction.")
        ),
        count=2,
    )
    assert [p["kind"] for _, p in events] == ["transaction.started", "transaction.ended"]
    await rec.wait_for(
        lambda t, p: t == topic(SITE, "sess-16", Channel.STATUS, root) and p["state"] == "offline"
    )
    await asyncio.sleep(0.3)
    assert (
        len(
            [
                1
                for t, p, _ in rec.messages
                if t.endswith("/event") and p["kind"] == "transaction.ended" and "sess-16" in t
            ]
        )
        == 1
    )


async def test_session_flow_201(port: int, rec: Recorder, settings: Settings, db_dsn: str) -> None:
    root = settings.topic_root
    async with pile(port, "sess-201", "ocpp2.0.1") as cp:
        boot = await cp.call(
            c201.BootNotification(charging_station={"model": "DC60", "vendor_name": "Acme"}, reason="PowerUp")
        )
        assert boot.status == "Accepted"
        auth = await cp.call(c201.Authorize(id_token={"id_token": "TOK1", "type": "ISO14443"}))
        assert auth.id_token_info["status"] == "Accepted"
        auth = await cp.call(c201.Authorize(id_token={"id_token": "TOKOTHER", "type": "ISO14443"}))
        assert auth.id_token_info["status"] == "NotAtThisLocation"

        def ev(kind: str, seq: int, wh: float, **kw: Any) -> Any:
            return c201.TransactionEvent(
                event_type=kind,
                timestamp=now_iso(seq - 10),
                trigger_reason="MeterValuePeriodic",
                seq_no=seq,
                transaction_info={"transaction_id": "tx-201-a", **kw},
                evse={"id": 1, "connector_id": 1},
                id_token={"id_token": "TOK1", "type": "ISO14443"} if kind == "Started" else None,
                meter_value=[
                    {
                        "timestamp": now_iso(seq - 10),
                        "sampled_value": [
                            {
                                "value": wh / 1000,
                                "measurand": "Energy.Active.Import.Register",
                                "unit_of_measure": {"unit": "kWh"},
                            },
                            {
                                "value": 11,
                                "measurand": "Power.Active.Import",
                                "unit_of_measure": {"unit": "W", "multiplier": 3},
                            },
                        ],
                    }
                ],
            )

        await cp.call(ev("Started", 0, 10000))
        await cp.call(ev("Updated", 1, 12000))
        await cp.call(ev("Updated", 1, 12000))  # replayed: same seqNo
        await cp.call(ev("Ended", 2, 15000, stopped_reason="EVDisconnected"))
        await cp.call(ev("Ended", 2, 15000, stopped_reason="EVDisconnected"))  # replayed again
        tele = await rec.wait_for(lambda t, p: t == topic(SITE, "sess-201", Channel.TELEMETRY, root), count=3)
        assert tele[0][1]["samples"][0]["values"] == {"energy_import_wh": 10000.0, "active_power_w": 11000.0}
        assert [p["seq"] for _, p in tele] == [0, 1, 2]
    [tx] = await _tx(db_dsn, "sess-201")
    assert tx["status"] == "ended" and tx["energy_wh"] == 5000 and tx["ocpp_tx_id"] == "tx-201-a"
    assert tx["stop_reason"] == "EVDisconnected"


async def test_transaction_survives_server_restart(settings: Settings, seeded: None, db_dsn: str) -> None:
    cfg = OcppSettings(node="restart-node", call_timeout_s=3, ping_interval_s=0)
    ts = now_iso(-120)
    async with running_server(settings, cfg) as p1, pile(p1, "sess-restart", "ocpp1.6") as cp:
        start = await cp.call(
            c16.StartTransaction(connector_id=1, id_tag="TOK1", meter_start=100, timestamp=ts)
        )
    async with running_server(settings, cfg) as p2, pile(p2, "sess-restart", "ocpp1.6") as cp:
        # the pile was offline and replays its queue: the start again, then the stop
        again = await cp.call(
            c16.StartTransaction(connector_id=1, id_tag="TOK1", meter_start=100, timestamp=ts)
        )
        assert again.transaction_id == start.transaction_id
        await cp.call(
            c16.StopTransaction(meter_stop=900, timestamp=now_iso(-5), transaction_id=start.transaction_id)
        )
    [tx] = await _tx(db_dsn, "sess-restart")
    assert tx["energy_wh"] == 800 and tx["status"] == "ended"


async def _command(settings: Settings, site: str, device: str, cmd: Command, rec: Recorder) -> dict[str, Any]:
    async with core_mqtt.client(settings.mqtt, f"ocpp-test-cmd-{uuid.uuid4().hex[:8]}") as client:
        await client.publish(topic(site, device, Channel.CMD, settings.topic_root), encode(cmd), qos=1)
    res = await rec.wait_for(lambda t, p: t.endswith("/cmd/result") and p.get("id") == cmd.id, within_s=10)
    return dict(res[0][1])


async def test_remote_start_over_mqtt(port: int, rec: Recorder, settings: Settings) -> None:
    async with pile(port, "sess-16", "ocpp1.6") as cp:
        await asyncio.sleep(0.3)  # the server subscribes to the pile's cmd topic when it connects
        result = await _command(
            settings,
            SITE,
            "sess-16",
            Command(id="rs-1", op="remote_start", args={"idTag": "TOK1", "connectorId": 1}),
            rec,
        )
        assert result["status"] == "accepted" and result["response"] == {"status": "Accepted"}
        assert cp.remote_starts == ["TOK1"]
        bad = await _command(settings, SITE, "sess-16", Command(id="rs-2", op="get_variables"), rec)
        assert bad["status"] == "rejected"
        invalid = await _command(
            settings, SITE, "sess-16", Command(id="rs-3", op="remote_start", args={"connectorId": "x"}), rec
        )
        assert invalid["status"] == "rejected"
        unsupported = await _command(settings, SITE, "sess-16", Command(id="rs-4", op="clear_cache"), rec)
        assert unsupported["status"] == "failed" and "NotImplemented" in unsupported["detail"]
    async with pile(port, "sess-201", "ocpp2.0.1"):
        await asyncio.sleep(0.3)
        result = await _command(
            settings, SITE, "sess-201", Command(id="rs-5", op="remote_start", args={"idToken": "TOK1"}), rec
        )
        assert result["status"] == "accepted" and result["response"]["status"] == "Accepted"


async def test_site_limit_divided_among_sessions_and_expires(
    port: int, rec: Recorder, settings: Settings
) -> None:
    async with pile(port, "lim-a", "ocpp1.6") as a, pile(port, "lim-b", "ocpp2.0.1") as b:
        start = await a.call(
            c16.StartTransaction(connector_id=1, id_tag="TOK1", meter_start=0, timestamp=now_iso())
        )
        await b.call(
            c201.TransactionEvent(
                event_type="Started",
                timestamp=now_iso(),
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": "lim-b-tx"},
                evse={"id": 1, "connector_id": 1},
                id_token={"id_token": "TOK1", "type": "ISO14443"},
            )
        )
        result = await _command(
            settings,
            "limit-site",
            SITE_TARGET,
            Command(id="lim-1", op="set_site_charging_limit", args={"watts": 10000}, hold_s=30),
            rec,
        )
        assert result["status"] == "accepted"

        async def until(pred: Any) -> None:
            async with asyncio.timeout(10):
                while not pred():  # noqa: ASYNC110 - the client's handlers fill the lists
                    await asyncio.sleep(0.05)

        await until(lambda: a.profiles and b.profiles)
        pa, pb = a.profiles[-1], b.profiles[-1]
        assert pa["charging_profile_purpose"] == "ChargePointMaxProfile"
        assert pa["charging_schedule"]["charging_schedule_period"][0]["limit"] == 5000
        assert pb["charging_profile_purpose"] == "ChargingStationMaxProfile"
        assert pb["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 5000
        valid_to = datetime.fromisoformat(pa["valid_to"].replace("Z", "+00:00"))
        assert timedelta(seconds=25) < valid_to - datetime.now(UTC) <= timedelta(seconds=31)
        assert pb["valid_to"] == pa["valid_to"]
        # b's session ends: a gets the whole limit, capped at its 7 kW
        await b.call(
            c201.TransactionEvent(
                event_type="Ended",
                timestamp=now_iso(),
                trigger_reason="EVDeparted",
                seq_no=1,
                transaction_info={"transaction_id": "lim-b-tx", "stopped_reason": "EVDisconnected"},
            )
        )
        await until(lambda: len(a.profiles) >= 2)
        assert a.profiles[-1]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 7000
        await a.call(
            c16.StopTransaction(meter_stop=10, timestamp=now_iso(), transaction_id=start.transaction_id)
        )
        bad = await _command(
            settings,
            "limit-site",
            SITE_TARGET,
            Command(id="lim-2", op="set_site_charging_limit", args={"watts": 10000}),
            rec,
        )
        assert bad["status"] == "rejected"  # a limit without a validity is refused


@pytest_asyncio.fixture
async def own_spine(settings: Settings) -> AsyncIterator[Settings]:
    """A database, topic root, ingest client id and share group of this test's own, with the pile
    registered there. Ingest sessions persist on the broker: one that an earlier test stopped (the DR
    tests run ingest on the run's root, in the default share group, each under a client id of its own)
    stays a member of its share group, and Mosquitto keeps queueing its share of the messages for it —
    a reading of this test could go there and never reach this test's ingest."""
    own = f"{settings.db.dsn}_ocpp_ingest"
    await db.ensure_database(own)
    await db.migrate(own)
    tag = uuid.uuid4().hex[:8]
    mine = settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"dsn": own}),
            "topic_root": f"{settings.topic_root}-ocpp-ingest",
            "ingest": settings.ingest.model_copy(
                update={
                    "share_group": f"ocpp-{tag}",
                    "client_id": f"ocpp-ingest-{tag}",
                    "batch_max_delay_s": 0.1,
                }
            ),
        }
    )
    async with await psycopg.AsyncConnection.connect(own, autocommit=True) as conn:
        await upsert_tenant(conn, "sess-op", "Session operator", "operator")
        await upsert_site(conn, SITE, "Session site", tenant_key="sess-op")
        await registry.add_pile(conn, "sess-201", SITE, lifecycle="operating", password=PW, connectors=1)
    try:
        yield mine
    finally:
        async with await psycopg.AsyncConnection.connect(
            db.with_database(own, "postgres"), autocommit=True
        ) as conn:
            name = urlsplit(own).path.lstrip("/")
            await conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def test_meter_values_land_in_timescaledb_via_ingest(own_spine: Settings) -> None:
    from ingest.service import IngestService

    settings = own_spine
    assert settings.ingest.client_id is not None
    ingest = IngestService(settings, client_id=settings.ingest.client_id, session_expiry_s=60)
    ingest_task = asyncio.create_task(ingest.run(), name="ingest")
    cfg = OcppSettings(node="sess-ingest-node", call_timeout_s=3, ping_interval_s=0)
    try:
        async with asyncio.timeout(10):
            await ingest.ready.wait()  # subscribed: nothing the pile sends can precede the subscription
        async with running_server(settings, cfg) as port, pile(port, "sess-201", "ocpp2.0.1") as cp:
            await cp.call(
                c201.MeterValues(
                    evse_id=1,
                    meter_value=[
                        {
                            "timestamp": now_iso(),
                            "sampled_value": [
                                {
                                    "value": 3.3,
                                    "measurand": "Power.Active.Import",
                                    "unit_of_measure": {"unit": "kW"},
                                }
                            ],
                        }
                    ],
                )
            )
        async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
            async with asyncio.timeout(15):
                while True:
                    cur = await conn.execute(
                        "SELECT t.value FROM telemetry t JOIN devices d ON d.id = t.device_id"
                        " JOIN metrics m ON m.id = t.metric_id"
                        " WHERE d.key = 'sess-201' AND m.name = 'active_power_w'"
                    )
                    rows = [r[0] for r in await cur.fetchall()]
                    if rows:
                        break
                    await asyncio.sleep(0.2)
        assert rows == [3300.0]  # kW converted to the catalogue's W, stored once
    finally:
        ingest_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest_task
        # The broker's session of this ingest (and its share group) ends with the test.
        async with aiomqtt.Client(
            settings.mqtt.host, settings.mqtt.port, identifier=settings.ingest.client_id, clean_session=True
        ):
            pass
