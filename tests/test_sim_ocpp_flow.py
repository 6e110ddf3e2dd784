"""Simulated piles over real websockets against a minimal central system written here on the ``ocpp``
library (validation on, both sides): boot, authorise, start, meter values, stop; Pending boots; the
offline queue; server-initiated calls; smart charging that the physics follows."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.charge_point import ChargePoint as LibCP
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as res201
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from simulators.clock import SimClock
from simulators.ocpp import PileSpec, run_piles
from simulators.ocpp.physics import Ev

PASSWORD = "s3cret-pile-password"


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Csms:
    """Records every request per pile; answers Pending to ids in ``pending``; tokens in ``blocked`` are
    refused."""

    pending: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=lambda: {"BLOCKED"})
    log: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    cps: dict[str, LibCP] = field(default_factory=dict)
    tx_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    url: str = ""

    def actions(self, pile: str) -> list[str]:
        return [a for a, _ in self.log.get(pile, [])]

    def payloads(self, pile: str, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.log.get(pile, []) if a == action]


def _cp16(csms: Csms, pid: str, ws: ServerConnection) -> LibCP:
    rec = csms.log.setdefault(pid, [])

    class Server16(CP16):
        @on("BootNotification")
        def boot(self, **kw: Any) -> Any:
            rec.append(("BootNotification", kw))
            status = "Pending" if pid in csms.pending else "Accepted"
            return res16.BootNotification(
                current_time=_now(), interval=1 if status == "Pending" else 60, status=status
            )

        @on("Heartbeat")
        def hb(self) -> Any:
            rec.append(("Heartbeat", {}))
            return res16.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def status(self, **kw: Any) -> Any:
            rec.append(("StatusNotification", kw))
            return res16.StatusNotification()

        @on("Authorize")
        def authorize(self, id_tag: str) -> Any:
            rec.append(("Authorize", {"id_tag": id_tag}))
            return res16.Authorize(
                id_tag_info={"status": "Blocked" if id_tag in csms.blocked else "Accepted"}
            )

        @on("StartTransaction")
        def start_tx(self, **kw: Any) -> Any:
            rec.append(("StartTransaction", kw))
            return res16.StartTransaction(
                transaction_id=next(csms.tx_ids), id_tag_info={"status": "Accepted"}
            )

        @on("StopTransaction")
        def stop_tx(self, **kw: Any) -> Any:
            rec.append(("StopTransaction", kw))
            return res16.StopTransaction()

        @on("MeterValues")
        def mv(self, **kw: Any) -> Any:
            rec.append(("MeterValues", kw))
            return res16.MeterValues()

        @on("FirmwareStatusNotification")
        def fw(self, **kw: Any) -> Any:
            rec.append(("FirmwareStatusNotification", kw))
            return res16.FirmwareStatusNotification()

        @on("DiagnosticsStatusNotification")
        def diag(self, **kw: Any) -> Any:
            rec.append(("DiagnosticsStatusNotification", kw))
            return res16.DiagnosticsStatusNotification()

    return Server16(pid, ws)


def _cp201(csms: Csms, pid: str, ws: ServerConnection) -> LibCP:
    rec = csms.log.setdefault(pid, [])

    class Server201(CP201):
        @on("BootNotification")
        def boot(self, **kw: Any) -> Any:
            rec.append(("BootNotification", kw))
            status = "Pending" if pid in csms.pending else "Accepted"
            return res201.BootNotification(
                current_time=_now(), interval=1 if status == "Pending" else 60, status=status
            )

        @on("Heartbeat")
        def hb(self, **kw: Any) -> Any:
            rec.append(("Heartbeat", kw))
            return res201.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def status(self, **kw: Any) -> Any:
            rec.append(("StatusNotification", kw))
            return res201.StatusNotification()

        @on("Authorize")
        def authorize(self, id_token: dict[str, Any], **kw: Any) -> Any:
            rec.append(("Authorize", {"id_token": id_token}))
            st = "Blocked" if id_token["id_token"] in csms.blocked else "Accepted"
            return res201.Authorize(id_token_info={"status": st})

        @on("TransactionEvent")
        def tx(self, **kw: Any) -> Any:
            rec.append(("TransactionEvent", kw))
            if kw["event_type"] == "Started":
                return res201.TransactionEvent(id_token_info={"status": "Accepted"})
            return res201.TransactionEvent()

        @on("MeterValues")
        def mv(self, **kw: Any) -> Any:
            rec.append(("MeterValues", kw))
            return res201.MeterValues()

        @on("FirmwareStatusNotification")
        def fw(self, **kw: Any) -> Any:
            rec.append(("FirmwareStatusNotification", kw))
            return res201.FirmwareStatusNotification()

        @on("LogStatusNotification")
        def log(self, **kw: Any) -> Any:
            rec.append(("LogStatusNotification", kw))
            return res201.LogStatusNotification()

    return Server201(pid, ws)


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    state = Csms()
    expected = "Basic " + base64.b64encode(b"%s:" + PASSWORD.encode()).decode()  # placeholder, per pile below

    def check_auth(conn: ServerConnection, request: Request) -> Response | None:
        pid = request.path.rsplit("/", 1)[-1]
        want = "Basic " + base64.b64encode(f"{pid}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != want:
            return Response(401, "Unauthorized", Headers({"WWW-Authenticate": 'Basic realm="ocpp"'}), b"")
        return None

    async def handler(ws: ServerConnection) -> None:
        pid = ws.request.path.rsplit("/", 1)[-1] if ws.request else "?"
        cp = _cp16(state, pid, ws) if ws.subprotocol == "ocpp1.6" else _cp201(state, pid, ws)
        state.cps[pid] = cp
        try:
            await cp.start()
        except Exception:
            pass

    assert expected
    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
        process_request=check_auth,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        state.url = f"ws://127.0.0.1:{port}/ocpp"
        yield state


def spec(pid: str, version: str, **kw: Any) -> PileSpec:
    return PileSpec(id=pid, version=version, password=PASSWORD, **kw)


def ev(token: str = "TAG001", soc: float = 40.0, target: float = 90.0) -> Ev:
    return Ev(
        capacity_wh=60_000,
        soc_pct=soc,
        target_soc_pct=target,
        max_ac_w=7_000,
        max_dc_w=90_000,
        departure=datetime.now(UTC) + timedelta(days=1),
        id_token=token,
    )


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_session_flow(csms: Csms, version: str) -> None:
    pid = f"flow-{version.replace('.', '')}"
    clock = SimClock(factor=60)  # one meter value per simulated minute = one a second
    async with run_piles([spec(pid, version, fast=True, max_power_w=60_000)], csms.url, clock=clock) as fleet:
        await fleet.wait_accepted(within_s=10)
        pile = fleet.pile(pid)
        pile.plug_in(ev=ev())
        await pile.wait_for(lambda: pile.power_w() > 0, 5)
        assert pile.power_w() == pytest.approx(60_000)  # min(EV 90 kW, pile 60 kW, no limit)
        await pile.wait_for(
            lambda: pile.sent["MeterValues" if version == "1.6" else "TransactionEvent"] >= 3, 10
        )
        soc_before = pile.session(1).ev.soc_pct  # type: ignore[union-attr]
        pile.unplug(1)
        await pile.wait_for(lambda: not pile.txq, 5)
        assert soc_before > 40.0
    acts = csms.actions(pid)
    assert acts[0] == "BootNotification"
    assert "Authorize" in acts
    if version == "1.6":
        i_start, i_stop = acts.index("StartTransaction"), acts.index("StopTransaction")
        assert acts.index("Authorize") < i_start < acts.index("MeterValues") < i_stop
        start = csms.payloads(pid, "StartTransaction")[0]
        stop = csms.payloads(pid, "StopTransaction")[0]
        assert stop["meter_stop"] > start["meter_start"]
        assert stop["reason"] == "EVDisconnected"
        mv = csms.payloads(pid, "MeterValues")[0]
        measurands = {v["measurand"] for v in mv["meter_value"][0]["sampled_value"]}
        assert measurands == {
            "Energy.Active.Import.Register",
            "Power.Active.Import",
            "Current.Import",
            "Voltage",
            "SoC",
        }
        assert mv["transaction_id"] == 1000 or mv["transaction_id"] > 1000
    else:
        events = csms.payloads(pid, "TransactionEvent")
        assert events[0]["event_type"] == "Started"
        assert events[-1]["event_type"] == "Ended"
        assert [e["seq_no"] for e in events] == list(range(len(events)))
        assert len({e["transaction_info"]["transaction_id"] for e in events}) == 1
        assert events[-1]["transaction_info"]["stopped_reason"] == "EVDisconnected"
        assert all(not e.get("offline") for e in events)
    statuses = [p.get("status", p.get("connector_status")) for p in csms.payloads(pid, "StatusNotification")]
    assert "Charging" in statuses or "Occupied" in statuses


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_blocked_token_does_not_start(csms: Csms, version: str) -> None:
    pid = f"blocked-{version.replace('.', '')}"
    async with run_piles([spec(pid, version)], csms.url, clock=SimClock(60)) as fleet:
        await fleet.wait_accepted(within_s=10)
        pile = fleet.pile(pid)
        pile.plug_in(ev=ev("BLOCKED"))
        await pile.wait_for(lambda: pile.counters.auth_rejected == 1, 5)
        assert pile.session(1) is None and pile.power_w() == 0
    assert "StartTransaction" not in csms.actions(pid) and "TransactionEvent" not in csms.actions(pid)


async def test_wrong_password_is_refused(csms: Csms) -> None:
    bad = PileSpec(id="intruder", version="1.6", password="wrong")
    async with run_piles([bad], csms.url) as fleet:
        pile = fleet.pile("intruder")
        await pile.wait_for(lambda: pile.last_error is not None, 5)
        assert "401" in (pile.last_error or "")
        assert not pile.accepted


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_pending_boot_retries_until_accepted(csms: Csms, version: str) -> None:
    pid = f"pending-{version.replace('.', '')}"
    csms.pending.add(pid)
    async with run_piles([spec(pid, version)], csms.url) as fleet:
        pile = fleet.pile(pid)
        await pile.wait_for(lambda: pile.state == "Pending", 5)
        pile.plug_in(ev=ev())  # while Pending: no Authorize, no transaction message goes out
        await asyncio.sleep(1.3)
        assert set(csms.actions(pid)) == {"BootNotification"}
        assert len(csms.actions(pid)) >= 2  # retried after the interval (1 s)
        csms.pending.discard(pid)
        await fleet.wait_accepted(within_s=5)
        await pile.wait_for(lambda: not pile.txq and pile.counters.sessions == 1, 5)
    assert ("StartTransaction" if version == "1.6" else "TransactionEvent") in csms.actions(pid)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_offline_queue_replayed_in_order(csms: Csms, version: str) -> None:
    pid = f"offline-{version.replace('.', '')}"
    clock = SimClock(factor=120)  # a meter value every 0.5 s
    async with run_piles([spec(pid, version, max_power_w=7_000)], csms.url, clock=clock) as fleet:
        await fleet.wait_accepted(within_s=10)
        pile = fleet.pile(pid)
        pile.sent_tx = []
        pile.plug_in(ev=ev())
        await pile.wait_for(lambda: len(pile.sent_tx or []) >= 2, 5)
        pile.go_offline(2.0)
        await pile.wait_for(lambda: not pile.online, 2)
        await pile.wait_for(lambda: len(pile.txq) >= 3, 3)  # meter values queue up meanwhile
        queued = len(pile.txq)
        pile.unplug(1)  # the session ends while offline: the stop is queued behind them
        await pile.wait_for(lambda: pile.accepted and not pile.txq, 10)
        assert pile.counters.replayed >= queued
        assert pile.counters.connects == 2
    if version == "1.6":
        acts = [a for a in csms.actions(pid) if a in ("StartTransaction", "MeterValues", "StopTransaction")]
        assert acts[0] == "StartTransaction" and acts[-1] == "StopTransaction"
        assert set(acts[1:-1]) == {"MeterValues"}
        stamps = [p["meter_value"][0]["timestamp"] for p in csms.payloads(pid, "MeterValues")]
        assert stamps == sorted(stamps)
        registers = [
            int(p["meter_value"][0]["sampled_value"][0]["value"]) for p in csms.payloads(pid, "MeterValues")
        ]
        assert registers == sorted(registers)
    else:
        events = csms.payloads(pid, "TransactionEvent")
        assert [e["seq_no"] for e in events] == list(range(len(events)))
        assert events[0]["event_type"] == "Started" and events[-1]["event_type"] == "Ended"
        offline = [e for e in events if e.get("offline")]
        assert len(offline) >= queued and events[-1].get("offline") is True
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_smart_charging_limit_and_fallback(csms: Csms, version: str) -> None:
    """A TxDefaultProfile of 3 kW valid for a few seconds: the power follows it, then returns."""
    pid = f"smart-{version.replace('.', '')}"
    clock = SimClock(factor=60)
    async with run_piles([spec(pid, version, max_power_w=7_000)], csms.url, clock=clock) as fleet:
        await fleet.wait_accepted(within_s=10)
        pile = fleet.pile(pid)
        pile.plug_in(ev=ev())
        await pile.wait_for(lambda: pile.power_w() > 0, 5)
        assert pile.power_w() == pytest.approx(7_000)
        now = clock.now()
        valid_to = (now + timedelta(seconds=240)).isoformat()  # 4 simulated minutes = 4 s
        sched = {
            "charging_rate_unit": "W",
            "charging_schedule_period": [{"start_period": 0, "limit": 3000.0}],
        }
        cp = csms.cps[pid]
        if version == "1.6":
            prof = {
                "charging_profile_id": 7,
                "stack_level": 1,
                "charging_profile_purpose": "TxDefaultProfile",
                "charging_profile_kind": "Absolute",
                "valid_to": valid_to,
                "charging_schedule": {**sched, "start_schedule": now.isoformat()},
            }
            r = await cp.call(call16.SetChargingProfile(connector_id=1, cs_charging_profiles=prof))
            comp = await cp.call(
                call16.GetCompositeSchedule(connector_id=1, duration=600, charging_rate_unit="W")
            )
            periods = comp.charging_schedule["charging_schedule_period"]
        else:
            prof = {
                "id": 7,
                "stack_level": 1,
                "charging_profile_purpose": "TxDefaultProfile",
                "charging_profile_kind": "Absolute",
                "valid_to": valid_to,
                "charging_schedule": [{"id": 1, **sched, "start_schedule": now.isoformat()}],
            }
            r = await cp.call(call201.SetChargingProfile(evse_id=1, charging_profile=prof))
            comp = await cp.call(
                call201.GetCompositeSchedule(evse_id=1, duration=600, charging_rate_unit="W")
            )
            periods = comp.schedule["charging_schedule_period"]
        assert r.status == "Accepted"
        assert comp.status == "Accepted"
        assert periods[0]["limit"] == 3000 and periods[-1]["limit"] == 7000
        assert pile.limit_w(1) == 3000
        assert pile.power_w() == pytest.approx(3000)
        await pile.wait_for(lambda: pile.power_w() > 3000, 8)  # validTo passed: back to the pile's max
        assert pile.power_w() == pytest.approx(7000)
        assert pile.limit_w(1) == 7000


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_server_commands(csms: Csms, version: str) -> None:
    pid = f"cmd-{version.replace('.', '')}"
    async with run_piles(
        [spec(pid, version, connectors=2, fast=True, max_power_w=120_000)], csms.url, clock=SimClock(60)
    ) as fleet:
        await fleet.wait_accepted(within_s=10)
        pile = fleet.pile(pid)
        cp = csms.cps[pid]
        if version == "1.6":
            r = await cp.call(call16.RemoteStartTransaction(id_tag="REMOTE1", connector_id=2))
            assert r.status == "Accepted"
            await pile.wait_for(lambda: pile.session(2) is not None and pile.session(2).tx_id is not None, 5)  # type: ignore[union-attr]
            tx = int(pile.session(2).tx_id)  # type: ignore[union-attr, arg-type]
            assert (await cp.call(call16.RemoteStopTransaction(transaction_id=tx))).status == "Accepted"
            assert (await cp.call(call16.RemoteStopTransaction(transaction_id=999_999))).status == "Rejected"
            conf = await cp.call(call16.GetConfiguration(key=["HeartbeatInterval", "Nope"]))
            assert conf.configuration_key[0]["value"] == "60" and conf.unknown_key == ["Nope"]
            ch = await cp.call(call16.ChangeConfiguration(key="MeterValueSampleInterval", value="30"))
            assert ch.status == "Accepted" and pile.meter_interval_s == 30
            assert (
                await cp.call(call16.ChangeConfiguration(key="NumberOfConnectors", value="3"))
            ).status == "Rejected"
            assert (
                await cp.call(call16.ChangeAvailability(connector_id=1, type="Inoperative"))
            ).status == "Accepted"
            assert (await cp.call(call16.UnlockConnector(connector_id=1))).status == "Unlocked"
            assert (await cp.call(call16.TriggerMessage(requested_message="Heartbeat"))).status == "Accepted"
            assert (await cp.call(call16.ClearCache())).status == "Accepted"
            sl = await cp.call(
                call16.SendLocalList(
                    list_version=3,
                    update_type="Full",
                    local_authorization_list=[{"id_tag": "LOCAL1", "id_tag_info": {"status": "Accepted"}}],
                )
            )
            assert sl.status == "Accepted" and pile.local_list == {"LOCAL1": "Accepted"}
            await cp.call(call16.UpdateFirmware(location="http://fw.example/x.bin", retrieve_date=_now()))
            await cp.call(call16.GetDiagnostics(location="ftp://logs.example/"))
            await pile.wait_for(lambda: len(csms.payloads(pid, "FirmwareStatusNotification")) == 4, 5)
            await pile.wait_for(lambda: len(csms.payloads(pid, "DiagnosticsStatusNotification")) == 2, 5)
            assert [p["status"] for p in csms.payloads(pid, "FirmwareStatusNotification")] == [
                "Downloading",
                "Downloaded",
                "Installing",
                "Installed",
            ]
            r = await cp.call(call16.Reset(type="Soft"))
        else:
            r = await cp.call(
                call201.RequestStartTransaction(
                    id_token={"id_token": "REMOTE1", "type": "ISO14443"}, remote_start_id=42, evse_id=2
                )
            )
            assert r.status == "Accepted"
            await pile.wait_for(lambda: pile.session(2) is not None, 5)
            tx2 = pile.session(2).tx_id  # type: ignore[union-attr]
            await pile.wait_for(lambda: not pile.txq, 5)
            started = csms.payloads(pid, "TransactionEvent")[0]
            assert (
                started["trigger_reason"] == "RemoteStart"
                and started["transaction_info"]["remote_start_id"] == 42
            )
            assert (await cp.call(call201.RequestStopTransaction(transaction_id=tx2))).status == "Accepted"
            gv = await cp.call(
                call201.GetVariables(
                    get_variable_data=[
                        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                        {"component": {"name": "Nope"}, "variable": {"name": "X"}},
                    ]
                )
            )
            assert gv.get_variable_result[0]["attribute_value"] == "60"
            assert gv.get_variable_result[1]["attribute_status"] == "UnknownComponent"
            sv = await cp.call(
                call201.SetVariables(
                    set_variable_data=[
                        {
                            "component": {"name": "SampledDataCtrlr"},
                            "variable": {"name": "TxUpdatedInterval"},
                            "attribute_value": "30",
                        }
                    ]
                )
            )
            assert sv.set_variable_result[0]["attribute_status"] == "Accepted" and pile.meter_interval_s == 30
            ca = await cp.call(call201.ChangeAvailability(operational_status="Inoperative", evse={"id": 1}))
            assert ca.status == "Accepted"
            assert (await cp.call(call201.UnlockConnector(evse_id=1, connector_id=1))).status == "Unlocked"
            assert (await cp.call(call201.TriggerMessage(requested_message="Heartbeat"))).status == "Accepted"
            assert (await cp.call(call201.ClearCache())).status == "Accepted"
            sl = await cp.call(
                call201.SendLocalList(
                    version_number=3,
                    update_type="Full",
                    local_authorization_list=[
                        {
                            "id_token": {"id_token": "LOCAL1", "type": "ISO14443"},
                            "id_token_info": {"status": "Accepted"},
                        }
                    ],
                )
            )
            assert sl.status == "Accepted" and pile.local_list == {"LOCAL1": "Accepted"}
            await cp.call(
                call201.UpdateFirmware(
                    request_id=5,
                    firmware={"location": "http://fw.example/x.bin", "retrieve_date_time": _now()},
                )
            )
            await cp.call(
                call201.GetLog(
                    log={"remote_location": "ftp://logs.example/"}, log_type="DiagnosticsLog", request_id=6
                )
            )
            await pile.wait_for(lambda: len(csms.payloads(pid, "FirmwareStatusNotification")) == 4, 5)
            await pile.wait_for(lambda: len(csms.payloads(pid, "LogStatusNotification")) == 2, 5)
            assert [p["request_id"] for p in csms.payloads(pid, "LogStatusNotification")] == [6, 6]
            r = await cp.call(call201.Reset(type="Immediate"))
        assert r.status == "Accepted"
        await pile.wait_for(lambda: pile.counters.connects == 2 and pile.accepted, 10)
        assert pile.call_errors == 0
    assert csms.actions(pid).count("BootNotification") == 2
