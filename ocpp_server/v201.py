"""OCPP 2.0.1: the handlers of a pile speaking ``ocpp2.0.1`` and the builders of its commands.

With ``v16`` the only module importing ``ocpp.v201``."""

from __future__ import annotations

import logging
import random
from datetime import datetime
from typing import Any, ClassVar

from ocpp.routing import on
from ocpp.v201 import call_result
from ocpp.v201.datatypes import IdTokenInfoType
from ocpp.v201.enums import (
    Action,
    AuthorizationStatusEnumType,
    DataTransferStatusEnumType,
    RegistrationStatusEnumType,
)

from core.charging import registry, sessions
from core.charging.registry import AuthResult, AuthStatus, BootStatus
from core.payloads import utcnow
from ocpp_server.commands import iso, site_profile_id
from ocpp_server.measurands import parse_ts, sample_metrics
from ocpp_server.pile import Pile, UnknownOp
from ocpp_server.rpc import ErrorCodes, SpecError

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp2.0.1"
CODES = ErrorCodes(
    format_violation="FormatViolation",
    occurrence_violation="OccurrenceConstraintViolation",
    message_type_not_supported="MessageTypeNotSupported",
    rpc_framework="RpcFrameworkError",
)
_AUTH = {
    AuthStatus.ACCEPTED: AuthorizationStatusEnumType.accepted,
    AuthStatus.BLOCKED: AuthorizationStatusEnumType.blocked,
    AuthStatus.EXPIRED: AuthorizationStatusEnumType.expired,
    AuthStatus.UNKNOWN: AuthorizationStatusEnumType.unknown,
    AuthStatus.WRONG_TENANT: AuthorizationStatusEnumType.not_at_this_location,
}
OPS: dict[str, str] = {
    "remote_start": "RequestStartTransaction",
    "remote_stop": "RequestStopTransaction",
    "reset": "Reset",
    "change_availability": "ChangeAvailability",
    "unlock_connector": "UnlockConnector",
    "trigger_message": "TriggerMessage",
    "get_variables": "GetVariables",
    "set_variables": "SetVariables",
    "get_base_report": "GetBaseReport",
    "clear_cache": "ClearCache",
    "update_firmware": "UpdateFirmware",
    "get_log": "GetLog",
    "send_local_list": "SendLocalList",
    "get_local_list_version": "GetLocalListVersion",
    "set_charging_profile": "SetChargingProfile",
    "clear_charging_profile": "ClearChargingProfile",
    "get_charging_profiles": "GetChargingProfiles",
    "get_composite_schedule": "GetCompositeSchedule",
    "data_transfer": "DataTransfer",
    "get_transaction_status": "GetTransactionStatus",
}


def id_token_info(result: AuthResult) -> IdTokenInfoType:
    return IdTokenInfoType(
        status=_AUTH[result.status],
        cache_expiry_date_time=iso(result.valid_until) if result.valid_until else None,
        group_id_token={"id_token": result.parent, "type": "Central"} if result.parent else None,
    )


def _ts(text: str | None) -> datetime:
    try:
        return parse_ts(text) if text else utcnow()
    except ValueError:
        raise SpecError("FormatViolation", f"timestamp {text!r} is not an ISO 8601 time") from None


class Pile201(Pile):
    _ocpp_version = "2.0.1"
    codes = CODES
    known_actions = frozenset(a.value for a in Action)
    ALLOWED_UNACCEPTED: ClassVar[frozenset[str]] = frozenset(
        {
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "FirmwareStatusNotification",
            "LogStatusNotification",
            "SecurityEventNotification",
            "NotifyReport",
            "DataTransfer",
            "NotifyEvent",
            "MeterValues",
        }
    )

    @on(Action.boot_notification)
    async def on_boot_notification(
        self, charging_station: dict[str, Any], reason: str, **kw: Any
    ) -> call_result.BootNotification:
        d = await self.boot(
            charging_station.get("vendor_name"),
            charging_station.get("model"),
            charging_station.get("serial_number"),
            charging_station.get("firmware_version"),
            reason,
        )
        accepted = d.status is BootStatus.ACCEPTED
        return call_result.BootNotification(
            current_time=iso(utcnow()),
            interval=self.ctx.ocpp.heartbeat_interval_s if accepted else self.ctx.ocpp.pending_retry_s,
            status=RegistrationStatusEnumType(d.status.value),
            status_info=None
            if accepted
            else {"reason_code": "NotAccepted", "additional_info": f"{d.violation}: lifecycle {d.lifecycle}"},
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **kw: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=iso(utcnow()))

    @on(Action.status_notification)
    async def on_status_notification(
        self, timestamp: str, connector_status: str, evse_id: int, connector_id: int, **kw: Any
    ) -> call_result.StatusNotification:
        await self.status_changed(evse_id, connector_id, connector_status, None, _ts(timestamp))
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_token: dict[str, Any], **kw: Any) -> call_result.Authorize:
        await self.require_operable("Authorize")
        return call_result.Authorize(id_token_info=id_token_info(await self.authorize(id_token["id_token"])))

    @on(Action.transaction_event)
    async def on_transaction_event(
        self,
        event_type: str,
        timestamp: str,
        trigger_reason: str,
        seq_no: int,
        transaction_info: dict[str, Any],
        **kw: Any,
    ) -> call_result.TransactionEvent:
        if event_type == "Started":
            await self.require_operable("TransactionEvent")
        ts = _ts(timestamp)
        evse = kw.get("evse") or {}
        token = (kw.get("id_token") or {}).get("id_token")
        meter_values = kw.get("meter_value") or []
        energy = None
        for mv in meter_values:
            values = sample_metrics(mv.get("sampled_value") or ())
            if "energy_import_wh" in values:
                energy = values["energy_import_wh"]
        async with self.ctx.pool.connection() as conn:
            outcome = await sessions.event_201(
                conn,
                self.auth.device_id,
                event_type=event_type,
                tx_id=transaction_info["transaction_id"],
                seq_no=seq_no,
                timestamp=ts,
                trigger_reason=trigger_reason,
                evse_id=evse.get("id"),
                connector_id=evse.get("connector_id"),
                id_token=token,
                energy_wh=energy,
                stopped_reason=transaction_info.get("stopped_reason"),
            )
        if meter_values and not outcome.duplicate:
            self.publish_meter_values(outcome.evse_id or 1, meter_values)
        self.transaction_event(
            outcome,
            ts,
            trigger_reason=trigger_reason,
            offline=bool(kw.get("offline")),
            reason=transaction_info.get("stopped_reason"),
        )
        info = id_token_info(await self.authorize(token)) if token else None
        return call_result.TransactionEvent(id_token_info=info)

    @on(Action.meter_values)
    def on_meter_values(
        self, evse_id: int, meter_value: list[dict[str, Any]], **kw: Any
    ) -> call_result.MeterValues:
        self.publish_meter_values(evse_id, meter_value)
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kw: Any) -> call_result.DataTransfer:
        self.publish_event(
            "data_transfer",
            {"vendor_id": vendor_id, "message_id": kw.get("message_id"), "data": kw.get("data")},
        )
        return call_result.DataTransfer(status=DataTransferStatusEnumType.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, status: str, **kw: Any) -> call_result.FirmwareStatusNotification:
        self.publish_event("firmware.status", {"status": status, "request_id": kw.get("request_id")})
        return call_result.FirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status(self, status: str, **kw: Any) -> call_result.LogStatusNotification:
        self.publish_event("log.status", {"status": status, "request_id": kw.get("request_id")})
        return call_result.LogStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event(
        self, type: str, timestamp: str, **kw: Any
    ) -> call_result.SecurityEventNotification:
        self.publish_event(
            "security.event", {"type": type, "at": timestamp, "tech_info": kw.get("tech_info")}
        )
        return call_result.SecurityEventNotification()

    @on(Action.notify_report)
    def on_notify_report(
        self, request_id: int, generated_at: str, seq_no: int, **kw: Any
    ) -> call_result.NotifyReport:
        self.publish_event(
            "report",
            {
                "request_id": request_id,
                "seq_no": seq_no,
                "tbc": bool(kw.get("tbc")),
                "items": len(kw.get("report_data") or []),
            },
        )
        return call_result.NotifyReport()

    @on(Action.notify_event)
    def on_notify_event(
        self, generated_at: str, seq_no: int, event_data: list[Any], **kw: Any
    ) -> call_result.NotifyEvent:
        self.publish_event("notify.event", {"seq_no": seq_no, "events": len(event_data)})
        return call_result.NotifyEvent()

    @on(Action.notify_charging_limit)
    def on_notify_charging_limit(
        self, charging_limit: dict[str, Any], **kw: Any
    ) -> call_result.NotifyChargingLimit:
        self.publish_event("charging_limit", {"source": charging_limit.get("charging_limit_source")})
        return call_result.NotifyChargingLimit()

    @on(Action.cleared_charging_limit)
    def on_cleared_charging_limit(
        self, charging_limit_source: str, **kw: Any
    ) -> call_result.ClearedChargingLimit:
        self.publish_event("charging_limit.cleared", {"source": charging_limit_source})
        return call_result.ClearedChargingLimit()

    @on(Action.report_charging_profiles)
    def on_report_charging_profiles(
        self,
        request_id: int,
        charging_limit_source: str,
        evse_id: int,
        charging_profile: list[Any],
        **kw: Any,
    ) -> call_result.ReportChargingProfiles:
        self.publish_event(
            "charging_profiles",
            {"request_id": request_id, "evse_id": evse_id, "profiles": len(charging_profile)},
        )
        return call_result.ReportChargingProfiles()

    # ------------------------------------------------------------------------------ operator commands

    async def execute(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        action = OPS.get(op)
        if action is None:
            raise UnknownOp(f"{op} is not an OCPP 2.0.1 operation")
        body = dict(args)
        if op == "remote_start":
            if isinstance(body.get("idToken"), str):
                body["idToken"] = {"idToken": body["idToken"], "type": "ISO14443"}
            body.setdefault("remoteStartId", random.randint(1, 2**31 - 1))
        if op in ("get_log", "get_base_report", "get_charging_profiles"):
            body.setdefault("requestId", random.randint(1, 2**31 - 1))
        if op == "send_local_list" and "localAuthorizationList" not in body:
            body = await self._local_list(body)
        return await self.call_action(action, body)

    async def _local_list(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.ctx.pool.connection() as conn:
            tokens = await registry.local_list(conn, self.auth.tenant_id)
        entries = []
        for token, ttype, result in tokens:
            info: dict[str, Any] = {"status": _AUTH[result.status].value}
            if result.valid_until:
                info["cacheExpiryDateTime"] = iso(result.valid_until)
            entries.append({"idToken": {"idToken": token, "type": ttype}, "idTokenInfo": info})
        return {
            "versionNumber": int(body.get("versionNumber") or random.randint(1, 2**31 - 1)),
            "updateType": body.get("updateType", "Full"),
            "localAuthorizationList": entries,
        }

    async def apply_limit(self, watts: float, valid_until: datetime) -> dict[str, Any]:
        now = utcnow()
        body = {
            "evseId": 0,
            "chargingProfile": {
                "id": site_profile_id(),
                "stackLevel": 1,
                "chargingProfilePurpose": "ChargingStationMaxProfile",
                "chargingProfileKind": "Absolute",
                "validFrom": iso(now),
                "validTo": iso(valid_until),
                "chargingSchedule": [
                    {
                        "id": site_profile_id(),
                        "startSchedule": iso(now),
                        "chargingRateUnit": "W",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(max(watts, 0.0), 1)}],
                    }
                ],
            },
        }
        return await self.call_action("SetChargingProfile", body)
