"""OCPP 2.0.1 piles: the library's ``ocpp.v201`` charge point with the simulator's handlers and messages.

Each connector of the spec is one EVSE with one connector (``evse.id`` = connector number, connector 1).
A transaction starts once the driver is authorised (TransactionEvent Started), is updated with
periodic meter values, and ends at unplug/stop (Ended); ``seqNo`` counts per transaction and events
created while offline carry ``offline: true`` when they are replayed.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint as LibChargePoint
from ocpp.v201 import call, call_result
from websockets.asyncio.client import ClientConnection

from simulators.ocpp.base import FastCallMixin
from simulators.ocpp.pile import Connector, Pile, TxMessage
from simulators.ocpp.profiles import PURPOSE_NAMES, Profile, Purpose, RateUnit, parse_profile

RESPONSE_TIMEOUT_S = 30.0
TOKEN_TYPE = "ISO14443"

# (component, variable) -> the pile's configuration key (shared with 1.6's names).
VARIABLES: dict[tuple[str, str], str] = {
    ("OCPPCommCtrlr", "HeartbeatInterval"): "HeartbeatInterval",
    ("SampledDataCtrlr", "TxUpdatedInterval"): "MeterValueSampleInterval",
    ("SampledDataCtrlr", "TxUpdatedMeasurands"): "MeterValuesSampledData",
    ("AuthCtrlr", "AuthorizeRemoteStart"): "AuthorizeRemoteTxRequests",
    ("AuthCtrlr", "LocalAuthorizeOffline"): "LocalAuthorizeOffline",
    ("AuthCtrlr", "OfflineTxForUnknownIdEnabled"): "AllowOfflineTxForUnknownId",
    ("LocalAuthListCtrlr", "Enabled"): "LocalAuthListEnabled",
    ("LocalAuthListCtrlr", "Entries"): "LocalAuthListMaxLength",
    ("SmartChargingCtrlr", "ProfileStackLevel"): "ChargeProfileMaxStackLevel",
    ("SmartChargingCtrlr", "PeriodsPerSchedule"): "ChargingScheduleMaxPeriods",
    ("SmartChargingCtrlr", "Entries"): "MaxChargingProfilesInstalled",
    ("TxCtrlr", "StopTxOnEVSideDisconnect"): "StopTransactionOnEVSideDisconnect",
    ("TxCtrlr", "EVConnectionTimeOut"): "ConnectionTimeOut",
}
COMPONENTS = {c for c, _ in VARIABLES}
REASONS_201 = {
    "DeAuthorized", "EmergencyStop", "EnergyLimitReached", "EVDisconnected", "GroundFault", "ImmediateReset",
    "Local", "LocalOutOfCredit", "MasterPass", "Other", "OvercurrentFault", "PowerLoss", "PowerQuality",
    "Reboot", "Remote", "SOCLimitReached", "StoppedByEV", "TimeLimitReached", "Timeout",
}  # fmt: skip
STOP_TRIGGER = {
    "Remote": "RemoteStop",
    "EVDisconnected": "EVCommunicationLost",
    "DeAuthorized": "Deauthorized",
}


def ts(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sampled(
    wh: float, power_w: float, soc: float | None, volts: float, phases: int, context: str
) -> list[Any]:
    amps = power_w / (volts * phases) if volts > 0 else 0.0
    values: list[Any] = [
        {
            "value": round(wh, 1),
            "measurand": "Energy.Active.Import.Register",
            "context": context,
            "unit_of_measure": {"unit": "Wh"},
        },
        {
            "value": round(power_w, 1),
            "measurand": "Power.Active.Import",
            "context": context,
            "unit_of_measure": {"unit": "W"},
        },
        {
            "value": round(amps, 2),
            "measurand": "Current.Import",
            "context": context,
            "unit_of_measure": {"unit": "A"},
        },
        {
            "value": round(volts, 1),
            "measurand": "Voltage",
            "context": context,
            "unit_of_measure": {"unit": "V"},
        },
    ]
    if soc is not None:
        values.append(
            {
                "value": round(soc, 1),
                "measurand": "SoC",
                "context": context,
                "location": "EV",
                "unit_of_measure": {"unit": "Percent"},
            }
        )
    return values


class ChargePoint201(FastCallMixin, LibChargePoint):
    """CSMS -> station calls of 2.0.1. Handlers answer at once; follow-up requests run as pile tasks."""

    def __init__(self, pile: Pile201, ws: ClientConnection) -> None:
        super().__init__(pile.spec.id, ws, response_timeout=RESPONSE_TIMEOUT_S)
        self._setup_fast(pile)
        self.p = pile

    @on("RequestStartTransaction")
    def on_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, evse_id: int | None = None,
        charging_profile: dict[str, Any] | None = None, **_: Any,
    ) -> Any:  # fmt: skip
        p = self.p
        free = [c for c in p.connectors if c.session is None and c.operative]
        if evse_id is not None:
            free = [c for c in free if c.id == evse_id]
        if not free:
            return call_result.RequestStartTransaction(status="Rejected")
        c = free[0]
        if charging_profile is not None:
            prof = p.parse(charging_profile)
            if prof.purpose != Purpose.TX:
                return call_result.RequestStartTransaction(status="Rejected")
            p.profiles.install(c.id, prof)
        token = str(id_token["id_token"])
        if c.ev is not None:
            c.ev.id_token = token
            s = p.start_session(c, c.ev, token, remote_start_id)
            return call_result.RequestStartTransaction(status="Accepted", transaction_id=s.tx_id)
        p.plug_in(c.id, id_token=token, remote=True, remote_start_id=remote_start_id)
        return call_result.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        ok = self.p.stop_transaction(transaction_id, "Remote")
        return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected")

    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        p = self.p
        if evse_id is not None:
            return call_result.Reset(status="Rejected")  # EVSE-level reset: not supported
        if type == "OnIdle" and any(c.session for c in p.connectors):
            p._spawn(p.reboot_when_idle())
            return call_result.Reset(status="Scheduled")
        return call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, type: str, evse_id: int | None = None, **_: Any) -> None:  # after the answer
        p = self.p
        if evse_id is None and not (type == "OnIdle" and any(c.session for c in p.connectors)):
            p._spawn(p.reboot("ImmediateReset"))

    @on("ChangeAvailability")
    def on_change_availability(
        self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        p = self.p
        evse_id = int(evse["id"]) if evse else 0
        if evse_id > len(p.connectors):
            return call_result.ChangeAvailability(status="Rejected")
        return call_result.ChangeAvailability(
            status=p.set_available(evse_id, operational_status == "Operative")
        )

    @on("UnlockConnector")
    def on_unlock(self, evse_id: int, connector_id: int, **_: Any) -> Any:
        p = self.p
        if not 1 <= evse_id <= len(p.connectors) or connector_id != 1:
            return call_result.UnlockConnector(status="UnknownConnector")
        if p.connector(evse_id).session is not None:
            return call_result.UnlockConnector(status="OngoingAuthorizedTransaction")
        p.unplug(evse_id)
        return call_result.UnlockConnector(status="Unlocked")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        p = self.p
        evse_id = int(evse["id"]) if evse else None
        if evse_id is not None and not 1 <= evse_id <= len(p.connectors):
            return call_result.TriggerMessage(status="Rejected")
        cons = [p.connector(evse_id)] if evse_id else p.connectors
        if requested_message == "BootNotification":
            p.boot_reason = "Triggered"
            if p.accepted:
                p._spawn(p._guard(p._send_boot()))
            else:
                p.trigger_boot()
        elif requested_message == "Heartbeat":
            p._spawn(p._guard(p._send_heartbeat()))
        elif requested_message == "StatusNotification":
            for c in cons:
                c.reported = None
                p._spawn(p._report_status(c))
        elif requested_message == "MeterValues":
            for c in cons:
                p._spawn(p._guard(p._send_idle_meter_values(c, trigger=True)))
        elif requested_message == "TransactionEvent":
            for c in cons:
                if c.session is not None:
                    p.enqueue_trigger(c)
        elif requested_message == "FirmwareStatusNotification":
            p._spawn(p._guard(p._send_firmware_status("Idle", None)))
        elif requested_message == "LogStatusNotification":
            p._spawn(p._guard(p._send_log_status("Idle", None)))
        else:
            return call_result.TriggerMessage(status="NotImplemented")
        return call_result.TriggerMessage(status="Accepted")

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for d in get_variable_data:
            comp, var = d["component"], d["variable"]
            key = VARIABLES.get((comp["name"], var["name"]))
            res: dict[str, Any] = {"component": comp, "variable": var}
            if d.get("attribute_type") not in (None, "Actual"):
                res["attribute_status"] = "NotSupportedAttributeType"
            elif key is None:
                res["attribute_status"] = (
                    "UnknownComponent" if comp["name"] not in COMPONENTS else "UnknownVariable"
                )
            else:
                res["attribute_status"] = "Accepted"
                res["attribute_value"] = self.p.config.values[key]
            results.append(res)
        return call_result.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for d in set_variable_data:
            comp, var = d["component"], d["variable"]
            key = VARIABLES.get((comp["name"], var["name"]))
            res: dict[str, Any] = {"component": comp, "variable": var}
            if d.get("attribute_type") not in (None, "Actual"):
                res["attribute_status"] = "NotSupportedAttributeType"
            elif key is None:
                res["attribute_status"] = (
                    "UnknownComponent" if comp["name"] not in COMPONENTS else "UnknownVariable"
                )
            else:
                st = self.p.set_config(key, str(d["attribute_value"]))
                res["attribute_status"] = "Accepted" if st == "Accepted" else "Rejected"
            results.append(res)
        return call_result.SetVariables(set_variable_result=results)

    @on("ClearCache")
    def on_clear_cache(self, **_: Any) -> Any:
        return call_result.ClearCache(status="Accepted")

    @on("UpdateFirmware")
    def on_update_firmware(self, request_id: int, firmware: dict[str, Any], **_: Any) -> Any:
        start = datetime.fromisoformat(str(firmware["retrieve_date_time"]).replace("Z", "+00:00"))
        self.p._spawn(
            self.p.firmware_flow(["Downloading", "Downloaded", "Installing", "Installed"], request_id, start)
        )
        return call_result.UpdateFirmware(status="Accepted")

    @on("GetLog")
    def on_get_log(self, log: dict[str, Any], log_type: str, request_id: int, **_: Any) -> Any:
        self.p._spawn(self.p.log_flow(request_id))
        name = f"{self.p.spec.id}-{log_type}-{self.p.clock.now():%Y%m%d%H%M%S}.log"
        return call_result.GetLog(status="Accepted", filename=name)

    @on("SendLocalList")
    def on_send_local_list(
        self,
        version_number: int,
        update_type: str,
        local_authorization_list: list[Any] | None = None,
        **_: Any,
    ) -> Any:
        entries = [
            (str(e["id_token"]["id_token"]), (e.get("id_token_info") or {}).get("status"))
            for e in local_authorization_list or []
        ]
        self.p.apply_local_list(version_number, update_type == "Full", entries)
        return call_result.SendLocalList(status="Accepted")

    @on("GetLocalListVersion")
    def on_get_local_list_version(self, **_: Any) -> Any:
        return call_result.GetLocalListVersion(version_number=self.p.local_list_version)

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        return call_result.SetChargingProfile(status=self.p.set_profile(evse_id, charging_profile))

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self, charging_profile_id: int | None = None, charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:  # fmt: skip
        crit = charging_profile_criteria or {}
        purpose = crit.get("charging_profile_purpose")
        n = self.p.profiles.clear(
            charging_profile_id,
            crit.get("evse_id"),
            PURPOSE_NAMES[purpose] if purpose else None,
            crit.get("stack_level"),
        )
        return call_result.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        p = self.p
        if not 0 <= evse_id <= len(p.connectors):
            return call_result.GetCompositeSchedule(status="Rejected")
        unit: RateUnit = "A" if charging_rate_unit == "A" else "W"
        start, points = p.composite(evse_id, duration)
        periods = [
            {"start_period": int(off), "limit": round(p.profiles.electrical.to_unit(w, unit), 1)}
            for off, w in points
        ]
        return call_result.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": ts(start),
                "charging_rate_unit": unit,
                "charging_schedule_period": periods,
            },
        )

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return call_result.DataTransfer(status="UnknownVendorId")


class Pile201(Pile):
    version = "2.0.1"

    def make_cp(self, ws: ClientConnection) -> ChargePoint201:
        return ChargePoint201(self, ws)

    def _cp(self) -> ChargePoint201:
        cp = self.cp
        if cp is None or not self.online:
            raise ConnectionError("offline")
        assert isinstance(cp, ChargePoint201)
        return cp

    def _new_tx_id(self) -> str | None:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4).hex

    def parse(self, raw: dict[str, Any]) -> Profile:
        schedules = raw.get("charging_schedule") or [{}]
        return self.from_server(parse_profile(raw, schedule=schedules[0], installed_at=self.clock.now()))

    def set_profile(self, evse_id: int, raw: dict[str, Any]) -> str:
        if not 0 <= evse_id <= len(self.connectors):
            return "Rejected"
        prof = self.parse(raw)
        if prof.stack_level > self.profiles.max_stack_level:
            return "Rejected"
        if prof.purpose in (Purpose.STATION_MAX, Purpose.EXTERNAL) and evse_id != 0:
            return "Rejected"
        if prof.purpose == Purpose.TX:
            s = self.connector(evse_id).session if evse_id else None
            if s is None or (prof.transaction_id is not None and prof.transaction_id != s.tx_id):
                return "Rejected"  # K01.FR.09: a TxProfile needs its transaction
        self.advance(self.clock.now())
        self.profiles.install(evse_id, prof)
        return "Accepted"

    def composite(self, evse_id: int, duration: int) -> tuple[datetime, list[tuple[float, float]]]:
        now = self.clock.now()
        s = self.connector(evse_id).session if evse_id else None
        cap = self.spec.max_power_w if evse_id == 0 else min(self.spec.per_connector_w, self.spec.max_power_w)
        return now, self.profiles.composite(
            evse_id, now, duration, cap, s.started_at if s else None, s.tx_id if s else None
        )

    async def reboot_when_idle(self) -> None:
        while any(c.session for c in self.connectors):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await self.reboot("Reboot")

    def enqueue_trigger(self, c: Connector) -> None:
        s = c.session
        if s is not None:
            self._enqueue("update", s, self.clock.now())
            self.txq[-1].trigger = "Trigger"

    async def _send_boot(self) -> tuple[str, float]:
        s = self.spec
        r = await self._cp().call(
            call.BootNotification(
                charging_station={
                    "model": s.model_name[:20],
                    "vendor_name": s.vendor[:50],
                    "serial_number": s.id[:25],
                    "firmware_version": s.firmware[:50],
                },
                reason=self.boot_reason,
            )
        )
        if r is None:
            return "Rejected", 0.0
        return str(r.status), float(r.interval)

    async def _send_heartbeat(self) -> None:
        await self._cp().call(call.Heartbeat())

    async def _send_status(self, connector: Connector | None) -> None:
        if connector is None:
            return  # 2.0.1 has no station-level connector status
        st = {"Available": "Available", "Unavailable": "Unavailable", "Faulted": "Faulted"}.get(
            connector.status, "Occupied"
        )
        await self._cp().call(
            call.StatusNotification(
                timestamp=ts(self.clock.now()), connector_status=st, evse_id=connector.id, connector_id=1
            )
        )

    async def _send_authorize(self, token: str) -> bool:
        r = await self._cp().call(call.Authorize(id_token={"id_token": token, "type": TOKEN_TYPE}))
        return r is not None and r.id_token_info.get("status") == "Accepted"

    async def _send_tx(self, msg: TxMessage) -> None:
        s = msg.session
        c = self.connector(s.connector_id)
        context = {"start": "Transaction.Begin", "update": "Sample.Periodic", "stop": "Transaction.End"}[
            msg.kind
        ]
        if msg.trigger == "Trigger":
            context = "Trigger"
        state = "Charging" if msg.power_w > 0 else ("SuspendedEV" if s.ev.done else "SuspendedEVSE")
        info: dict[str, Any] = {"transaction_id": s.tx_id, "charging_state": state}
        kwargs: dict[str, Any] = {}
        if msg.kind == "start":
            event, trigger = "Started", ("RemoteStart" if s.remote_start_id is not None else "Authorized")
            if s.remote_start_id is not None:
                info["remote_start_id"] = s.remote_start_id
            kwargs["id_token"] = {"id_token": s.id_token, "type": TOKEN_TYPE}
            kwargs["evse"] = {"id": c.id, "connector_id": 1}
        elif msg.kind == "update":
            event, trigger = "Updated", msg.trigger
        else:
            event = "Ended"
            reason = msg.reason if msg.reason in REASONS_201 else "Other"
            trigger = STOP_TRIGGER.get(reason, "StopAuthorized" if reason == "Local" else "EVDeparted")
            if reason in ("SOCLimitReached", "EnergyLimitReached"):
                trigger = "EnergyLimitReached"
            if reason == "ImmediateReset":
                trigger = "ResetCommand"
            info["stopped_reason"] = reason
            info["charging_state"] = "EVConnected" if reason != "EVDisconnected" else "Idle"
        r = await self._cp().call(
            call.TransactionEvent(
                event_type=event,
                timestamp=ts(msg.ts),
                trigger_reason=trigger,
                seq_no=msg.seq_no,
                transaction_info=info,
                meter_value=[
                    {
                        "timestamp": ts(msg.ts),
                        "sampled_value": _sampled(
                            msg.meter_wh,
                            msg.power_w,
                            msg.soc_pct,
                            self.spec.volts,
                            self.spec.n_phases,
                            context,
                        ),
                    }
                ],
                offline=True if msg.offline else None,
                **kwargs,
            )
        )
        if r is None:
            self.counters.tx_errors += 1
            return
        status = (r.id_token_info or {}).get("status")
        if msg.kind == "start" and status not in (None, "Accepted") and not s.ended:
            self._stop_session(c, "DeAuthorized")

    async def _send_idle_meter_values(self, connector: Connector, trigger: bool = False) -> None:
        self.advance(self.clock.now())
        s = connector.session
        mv = {
            "timestamp": ts(self.clock.now()),
            "sampled_value": _sampled(
                connector.energy_wh,
                connector.power_w,
                s.ev.soc_pct if s else None,
                self.spec.volts,
                self.spec.n_phases,
                "Trigger" if trigger else "Sample.Periodic",
            ),
        }
        await self._cp().call(call.MeterValues(evse_id=connector.id, meter_value=[mv]))

    async def _send_firmware_status(self, status: str, request_id: int | None) -> None:
        await self._cp().call(call.FirmwareStatusNotification(status=status, request_id=request_id))

    async def _send_log_status(self, status: str, request_id: int | None) -> None:
        await self._cp().call(call.LogStatusNotification(status=status, request_id=request_id))
