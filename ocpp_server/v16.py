"""OCPP 1.6J: the handlers of a pile speaking ``ocpp1.6`` and the builders of its commands.

With ``v201`` the only module importing ``ocpp.v16``."""

from __future__ import annotations

import logging
import random
from datetime import datetime
from typing import Any, ClassVar

from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus

from core.charging import sessions
from core.charging.registry import AuthResult, AuthStatus, BootStatus
from core.payloads import utcnow
from ocpp_server.commands import iso, site_profile_id
from ocpp_server.measurands import parse_ts
from ocpp_server.pile import Pile, UnknownOp
from ocpp_server.rpc import ErrorCodes, SpecError

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
CODES = ErrorCodes(
    format_violation="FormationViolation",
    occurrence_violation="OccurenceConstraintViolation",
    message_type_not_supported="ProtocolError",
    rpc_framework="ProtocolError",
)
_AUTH = {
    AuthStatus.ACCEPTED: AuthorizationStatus.accepted,
    AuthStatus.BLOCKED: AuthorizationStatus.blocked,
    AuthStatus.EXPIRED: AuthorizationStatus.expired,
    AuthStatus.UNKNOWN: AuthorizationStatus.invalid,
    AuthStatus.WRONG_TENANT: AuthorizationStatus.invalid,
}
# operator op -> OCPP 1.6 action; args are the action's payload (OCPP field names, camelCase)
OPS: dict[str, str] = {
    "remote_start": "RemoteStartTransaction",
    "remote_stop": "RemoteStopTransaction",
    "reset": "Reset",
    "change_availability": "ChangeAvailability",
    "unlock_connector": "UnlockConnector",
    "trigger_message": "TriggerMessage",
    "get_configuration": "GetConfiguration",
    "change_configuration": "ChangeConfiguration",
    "clear_cache": "ClearCache",
    "update_firmware": "UpdateFirmware",
    "get_diagnostics": "GetDiagnostics",
    "get_log": "GetLog",
    "send_local_list": "SendLocalList",
    "get_local_list_version": "GetLocalListVersion",
    "set_charging_profile": "SetChargingProfile",
    "clear_charging_profile": "ClearChargingProfile",
    "get_composite_schedule": "GetCompositeSchedule",
    "data_transfer": "DataTransfer",
    "reserve_now": "ReserveNow",
    "cancel_reservation": "CancelReservation",
}


def id_tag_info(result: AuthResult) -> IdTagInfo:
    return IdTagInfo(
        status=_AUTH[result.status],
        expiry_date=iso(result.valid_until) if result.valid_until else None,
        parent_id_tag=result.parent,
    )


def _ts(text: str | None) -> datetime:
    try:
        return parse_ts(text) if text else utcnow()
    except ValueError:
        raise SpecError(
            "PropertyConstraintViolation", f"timestamp {text!r} is not an ISO 8601 time"
        ) from None


class Pile16(Pile):
    _ocpp_version = "1.6"
    codes = CODES
    known_actions = frozenset(a.value for a in Action)
    ALLOWED_UNACCEPTED: ClassVar[frozenset[str]] = frozenset(
        {
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "FirmwareStatusNotification",
            "DiagnosticsStatusNotification",
            "SecurityEventNotification",
            "DataTransfer",
            "LogStatusNotification",
            "SignedFirmwareStatusNotification",
            "StopTransaction",
            "MeterValues",
        }
    )

    @on(Action.boot_notification)
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kw: Any
    ) -> call_result.BootNotification:
        d = await self.boot(
            charge_point_vendor,
            charge_point_model,
            kw.get("charge_point_serial_number"),
            kw.get("firmware_version"),
            None,
        )
        accepted = d.status is BootStatus.ACCEPTED
        return call_result.BootNotification(
            current_time=iso(utcnow()),
            interval=self.ctx.ocpp.heartbeat_interval_s if accepted else self.ctx.ocpp.pending_retry_s,
            status=RegistrationStatus(d.status.value),
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **kw: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=iso(utcnow()))

    @on(Action.status_notification)
    async def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kw: Any
    ) -> call_result.StatusNotification:
        ts = _ts(kw.get("timestamp")) if kw.get("timestamp") else None
        await self.status_changed(
            connector_id, connector_id, status, None if error_code == "NoError" else error_code, ts
        )
        return call_result.StatusNotification()

    @on(Action.authorize)
    async def on_authorize(self, id_tag: str, **kw: Any) -> call_result.Authorize:
        await self.require_operable("Authorize")
        return call_result.Authorize(id_tag_info=id_tag_info(await self.authorize(id_tag)))

    @on(Action.start_transaction)
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kw: Any
    ) -> call_result.StartTransaction:
        await self.require_operable("StartTransaction")
        ts = _ts(timestamp)
        auth = await self.authorize(id_tag)
        async with self.ctx.pool.connection() as conn:
            outcome = await sessions.start_16(
                conn, self.auth.device_id, connector_id, id_tag, meter_start, ts
            )
        self.transaction_event(outcome, ts, meter_start_wh=meter_start, authorization=auth.status.value)
        return call_result.StartTransaction(transaction_id=outcome.id, id_tag_info=id_tag_info(auth))

    @on(Action.stop_transaction)
    async def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any
    ) -> call_result.StopTransaction:
        ts = _ts(timestamp)
        async with self.ctx.pool.connection() as conn:
            outcome = await sessions.stop_16(
                conn, self.auth.device_id, transaction_id, meter_stop, ts, kw.get("reason")
            )
        if kw.get("transaction_data") and (outcome is None or not outcome.duplicate):
            self.publish_meter_values((outcome.evse_id if outcome else None) or 1, kw["transaction_data"])
        if outcome is None:
            log.warning(
                "stop of an unknown transaction", extra={"pile": self.key, "transaction_id": transaction_id}
            )
        else:
            self.transaction_event(outcome, ts, meter_stop_wh=meter_stop, reason=kw.get("reason") or "Local")
        id_tag = kw.get("id_tag")
        info = id_tag_info(await self.authorize(id_tag)) if id_tag else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.meter_values)
    async def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kw: Any
    ) -> call_result.MeterValues:
        energy = self.publish_meter_values(connector_id, meter_value)
        tx = kw.get("transaction_id")
        if tx is not None and energy is not None:
            async with self.ctx.pool.connection() as conn:
                await sessions.meter_16(conn, self.auth.device_id, tx, energy)
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kw: Any) -> call_result.DataTransfer:
        self.publish_event(
            "data_transfer",
            {"vendor_id": vendor_id, "message_id": kw.get("message_id"), "data": kw.get("data")},
        )
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, status: str, **kw: Any) -> call_result.FirmwareStatusNotification:
        self.publish_event("firmware.status", {"status": status})
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, status: str, **kw: Any) -> call_result.DiagnosticsStatusNotification:
        self.publish_event("diagnostics.status", {"status": status})
        return call_result.DiagnosticsStatusNotification()

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

    @on(Action.signed_firmware_status_notification)
    def on_signed_firmware_status(
        self, status: str, **kw: Any
    ) -> call_result.SignedFirmwareStatusNotification:
        self.publish_event("firmware.status", {"status": status, "request_id": kw.get("request_id")})
        return call_result.SignedFirmwareStatusNotification()

    # ------------------------------------------------------------------------------ operator commands

    async def execute(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        action = OPS.get(op)
        if action is None:
            raise UnknownOp(f"{op} is not an OCPP 1.6 operation")
        body = dict(args)
        if op == "remote_start" and "idTag" not in body and "id_token" in body:
            body["idTag"] = body.pop("id_token")
        if op == "send_local_list" and "localAuthorizationList" not in body:
            body = await self._local_list(body)
        if op == "get_diagnostics" and "location" not in body:
            raise ValueError("get_diagnostics needs a location")
        return await self.call_action(action, body)

    async def _local_list(self, body: dict[str, Any]) -> dict[str, Any]:
        from core.charging import registry

        async with self.ctx.pool.connection() as conn:
            tokens = await registry.local_list(conn, self.auth.tenant_id)
        entries = []
        for token, _type, result in tokens:
            info = {"status": _AUTH[result.status].value}
            if result.valid_until:
                info["expiryDate"] = iso(result.valid_until)
            if result.parent:
                info["parentIdTag"] = result.parent
            entries.append({"idTag": token, "idTagInfo": info})
        return {
            "listVersion": int(body.get("listVersion") or random.randint(1, 2**31 - 1)),
            "updateType": body.get("updateType", "Full"),
            "localAuthorizationList": entries,
        }

    async def apply_limit(self, watts: float, valid_until: datetime) -> dict[str, Any]:
        now = utcnow()
        body = {
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": site_profile_id(),
                "stackLevel": 1,
                "chargingProfilePurpose": "ChargePointMaxProfile",
                "chargingProfileKind": "Absolute",
                "validFrom": iso(now),
                "validTo": iso(valid_until),
                "chargingSchedule": {
                    "chargingRateUnit": "W",
                    "startSchedule": iso(now),
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(max(watts, 0.0), 1)}],
                },
            },
        }
        return await self.call_action("SetChargingProfile", body)
