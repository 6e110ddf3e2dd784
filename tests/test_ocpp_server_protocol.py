"""OCPP server, protocol side: handshake refusals, the spec's CALLERRORs for malformed frames, the
lifecycle rule ("未批先建、未验先投") — over real websockets, for both OCPP versions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.charging import registry
from core.registry import upsert_site, upsert_tenant
from core.settings import Settings
from ocpp_server.settings import OcppSettings
from ocpp_server.testing import raw_call, running_server, ws_connect

PW = "secret-password-1"
BOOT16 = {"chargePointVendor": "Acme", "chargePointModel": "AC22"}
BOOT201 = {"reason": "PowerUp", "chargingStation": {"vendorName": "Acme", "model": "AC22"}}


@pytest_asyncio.fixture(scope="module")
async def port(settings: Settings, db_dsn: str) -> AsyncIterator[int]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await upsert_tenant(conn, "proto-op", "Protocol operator", "operator")
        await upsert_site(conn, "proto-site", "Protocol site", tenant_key="proto-op")
        for key, lifecycle in [
            ("proto-ok16", "operating"),
            ("proto-ok201", "operating"),
            ("proto-built16", "built"),
            ("proto-built201", "built"),
            ("proto-new", "proposed"),
            ("proto-retired", "retired"),
        ]:
            await registry.add_pile(
                conn, key, "proto-site", lifecycle=lifecycle, password=PW, max_power_w=22000
            )
    cfg = OcppSettings(node="proto-node", call_timeout_s=3, ping_interval_s=0)
    async with running_server(settings, cfg) as p:
        yield p


# ------------------------------------------------------------------------------------------ handshake


async def test_wrong_password_refused_with_401(port: int) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with ws_connect(port, "proto-ok16", "wrong-password", "ocpp1.6"):
            pass
    assert err.value.response.status_code == 401
    assert "Basic" in err.value.response.headers.get("WWW-Authenticate", "")


async def test_missing_credentials_refused_with_401(port: int) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with ws_connect(port, "proto-ok16", None, "ocpp1.6"):
            pass
    assert err.value.response.status_code == 401


async def test_unknown_pile_refused_with_404(port: int) -> None:
    with pytest.raises(InvalidStatus) as err:
        async with ws_connect(port, "nobody-knows-me", PW, "ocpp1.6"):
            pass
    assert err.value.response.status_code == 404


async def test_connection_offering_no_ocpp_subprotocol_is_closed(port: int) -> None:
    async with ws_connect(port, "proto-ok16", PW, ["mqtt"]) as ws:
        assert ws.subprotocol is None
        with pytest.raises(ConnectionClosed) as err:
            await asyncio.wait_for(ws.recv(), 5)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1002


async def test_both_subprotocols_negotiated(port: int) -> None:
    async with ws_connect(port, "proto-ok16", PW, "ocpp1.6") as ws:
        assert ws.subprotocol == "ocpp1.6"
    async with ws_connect(port, "proto-ok201", PW, "ocpp2.0.1") as ws:
        assert ws.subprotocol == "ocpp2.0.1"


async def test_reconnect_replaces_old_connection(port: int) -> None:
    async with ws_connect(port, "proto-ok16", PW, "ocpp1.6") as first:
        async with ws_connect(port, "proto-ok16", PW, "ocpp1.6") as second:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(first.recv(), 5)
            answer = await raw_call(second, [2, "hb", "Heartbeat", {}])
            assert answer[0] == 3 and "currentTime" in answer[2]


# ----------------------------------------------------------------------------------- malformed frames

CASES_16 = [
    ("not json at all", "-1", "FormationViolation"),
    ([2, "u1", "FlyToTheMoon", {}], "u1", "NotImplemented"),
    ([2, "u2", "Reset", {"type": "Hard"}], "u2", "NotSupported"),  # a Central System -> pile action
    ([2, "u3", "BootNotification", {"chargePointVendor": "Acme"}], "u3", "OccurenceConstraintViolation"),
    ([2, "u4", "BootNotification", {**BOOT16, "chargePointModel": 12}], "u4", "TypeConstraintViolation"),
    ([2, "u5", "BootNotification", {**BOOT16, "colour": "red"}], "u5", "FormationViolation"),
    (
        [2, "u6", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}],
        "u6",
        "PropertyConstraintViolation",
    ),
    ([2, "u7", "Heartbeat", []], "u7", "FormationViolation"),
    ([7, "u8", "Heartbeat", {}], "u8", "ProtocolError"),
    ([2, 42, "Heartbeat", {}], "-1", "ProtocolError"),
]
CASES_201 = [
    ("{broken", "-1", "FormatViolation"),
    ([2, "v1", "FlyToTheMoon", {}], "v1", "NotImplemented"),
    ([2, "v2", "Reset", {"type": "Immediate"}], "v2", "NotSupported"),
    ([2, "v3", "BootNotification", {"reason": "PowerUp"}], "v3", "OccurrenceConstraintViolation"),
    ([2, "v4", "Heartbeat", {"extra": 1}], "v4", "FormatViolation"),
    ([2, "v5", "BootNotification", {**BOOT201, "reason": "Bored"}], "v5", "PropertyConstraintViolation"),
    (
        [
            2,
            "v6",
            "StatusNotification",
            {
                "timestamp": "2024-01-01T00:00:00Z",
                "connectorStatus": "Available",
                "evseId": "one",
                "connectorId": 1,
            },
        ],
        "v6",
        "TypeConstraintViolation",
    ),
    ([5, "v7", "Heartbeat", {}], "v7", "MessageTypeNotSupported"),
    ([2, None, "Heartbeat", {}], "-1", "RpcFrameworkError"),
]


@pytest.mark.parametrize(
    ("version", "pile", "cases"),
    [("ocpp1.6", "proto-ok16", CASES_16), ("ocpp2.0.1", "proto-ok201", CASES_201)],
)
async def test_malformed_frames_get_the_specs_callerror_and_connection_lives(
    port: int, version: str, pile: str, cases: list[tuple[object, str, str]]
) -> None:
    async with ws_connect(port, pile, PW, version) as ws:
        for frame, uid, code in cases:
            answer = await raw_call(ws, frame if isinstance(frame, str) else json.dumps(frame))
            assert answer[0] == 4, (frame, answer)
            assert answer[1] == uid, (frame, answer)
            assert answer[2] == code, (frame, answer)
            assert isinstance(answer[3], str) and isinstance(answer[4], dict)
        # the connection carries on
        answer = await raw_call(ws, [2, "hb", "Heartbeat", {}])
        assert answer[0] == 3 and answer[1] == "hb"
        # and another pile was never disturbed: its connection was not touched
    other = "proto-ok201" if pile == "proto-ok16" else "proto-ok16"
    async with ws_connect(port, other, PW, "ocpp1.6" if other == "proto-ok16" else "ocpp2.0.1") as ws2:
        assert (await raw_call(ws2, [2, "hb2", "Heartbeat", {}]))[0] == 3


async def test_garbage_flood_does_not_crash_server(port: int) -> None:
    frames = [
        "",
        "[]",
        "[2]",
        '[3, "x", {}]',
        '[4, "y"]',
        "null",
        "1e9999",
        '[2, "z", null, null]',
        "\u0000",
        '[2,"a","Heartbeat",{},' * 3,
    ]
    async with ws_connect(port, "proto-ok16", PW, "ocpp1.6") as ws:
        for f in frames:
            await ws.send(f)
        await ws.send(b"\xff\xfe binary")
        # answers (or silence for stray results) and then a heartbeat still works
        answer = await raw_call(ws, [2, "after", "Heartbeat", {}], within_s=5)
        while answer[1] != "after":
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[0] == 3


# ------------------------------------------------------------------------------------- lifecycle rule


async def _violations(db_dsn: str, key: str) -> list[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        cur = await conn.execute(
            "SELECT v.kind, v.attempts FROM charging_violations v JOIN devices d ON d.id = v.device_id"
            " WHERE d.key = %s ORDER BY v.id",
            (key,),
        )
        return [(k, n) for k, n in await cur.fetchall()]


@pytest.mark.parametrize(
    ("version", "pile", "boot", "start"),
    [
        (
            "ocpp1.6",
            "proto-built16",
            BOOT16,
            [
                2,
                "s",
                "StartTransaction",
                {"connectorId": 1, "idTag": "T1", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"},
            ],
        ),
        (
            "ocpp2.0.1",
            "proto-built201",
            BOOT201,
            [
                2,
                "s",
                "TransactionEvent",
                {
                    "eventType": "Started",
                    "timestamp": "2024-01-01T00:00:00Z",
                    "triggerReason": "Authorized",
                    "seqNo": 0,
                    "transactionInfo": {"transactionId": "tx-x"},
                },
            ],
        ),
    ],
)
async def test_pile_not_accepted_gets_pending_and_a_violation(
    port: int, db_dsn: str, version: str, pile: str, boot: dict[str, object], start: list[object]
) -> None:
    async with ws_connect(port, pile, PW, version) as ws:
        answer = await raw_call(ws, [2, "b1", "BootNotification", boot])
        assert answer[0] == 3 and answer[2]["status"] == "Pending"
        assert await _violations(db_dsn, pile) == [("operating_before_acceptance", 1)]
        # trying to charge anyway is refused and recorded
        answer = await raw_call(ws, start)
        assert answer[0] == 4 and answer[2] == "SecurityError"
        assert (await _violations(db_dsn, pile))[0][1] == 2
        # once accepted, the next boot is Accepted and the pile is operating
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            assert await registry.transition(conn, pile, "accept") == "accepted"
        answer = await raw_call(ws, [2, "b2", "BootNotification", boot])
        assert answer[2]["status"] == "Accepted"
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            assert (await registry.get_pile(conn, pile))["lifecycle"] == "operating"


@pytest.mark.parametrize("pile", ["proto-new", "proto-retired"])
async def test_unapproved_or_retired_pile_is_rejected(port: int, db_dsn: str, pile: str) -> None:
    async with ws_connect(port, pile, PW, "ocpp1.6") as ws:
        answer = await raw_call(ws, [2, "b", "BootNotification", BOOT16])
        assert answer[2]["status"] == "Rejected"
    kinds = [k for k, _ in await _violations(db_dsn, pile)]
    assert kinds == ["operating_before_approval" if pile == "proto-new" else "operating_after_retirement"]


async def test_illegal_lifecycle_transition_raises(db_dsn: str, port: int) -> None:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        with pytest.raises(registry.IllegalTransition):
            await registry.transition(conn, "proto-new", "accept")
        with pytest.raises(registry.PileNotFound):
            await registry.transition(conn, "proto-nothing", "approve")
