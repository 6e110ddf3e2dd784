"""OCPP 1.6J piles: the library's ``ocpp.v16`` charge point with the simulator's handlers and messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as LibChargePoint
from ocpp.v16 import call, call_result
from websockets.asyncio.client import ClientConnection

from simulators.ocpp.base import FastCallMixin
from simulators.ocpp.physics import Ev
from simulators.ocpp.pile import Connector, Pile, TxMessage
from simulators.ocpp.profiles import PURPOSE_NAMES, Purpose, RateUnit, parse_profile

RESPONSE_TIMEOUT_S = 30.0
REASONS_16 = {
    "EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other", "PowerLoss", "Reboot", "Remote",
    "SoftReset", "UnlockCommand", "DeAuthorized",
}  # fmt: skip


def ts(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sampled(
    msg_wh: int, power_w: float, soc: float | None, volts: float, phases: int, context: str
) -> list[Any]:
    amps = power_w / (volts * phases) if volts > 0 else 0.0
    values = [
        {
            "value": str(msg_wh),
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
            "context": context,
        },
        {"value": f"{power_w:.0f}", "measurand": "Power.Active.Import", "unit": "W", "context": context},
        {"value": f"{amps:.1f}", "measurand": "Current.Import", "unit": "A", "context": context},
        {"value": f"{volts:.1f}", "measurand": "Voltage", "unit": "V", "context": context},
    ]
    if soc is not None:
        values.append(
            {
                "value": f"{soc:.1f}",
                "measurand": "SoC",
                "unit": "Percent",
                "context": context,
                "location": "EV",
            }
        )
    return values


class ChargePoint16(FastCallMixin, LibChargePoint):
    """Server -> pile calls of 1.6. Handlers answer at once; follow-up requests run as pile tasks."""

    def __init__(self, pile: Pile16, ws: ClientConnection) -> None:
        super().__init__(pile.spec.id, ws, response_timeout=RESPONSE_TIMEOUT_S)
        self._setup_fast(pile)
        self.p16 = pile

    @on("RemoteStartTransaction")
    def on_remote_start(
        self, id_tag: str, connector_id: int | None = None, charging_profile: Any = None
    ) -> Any:
        p = self.p16
        free = [c for c in p.connectors if c.session is None and c.operative]
        if connector_id is not None:
            free = [c for c in free if c.id == connector_id]
        if not free:
            return call_result.RemoteStartTransaction(status="Rejected")
        c = free[0]
        if charging_profile is not None:
            prof = p.parse(charging_profile)
            if prof.purpose != Purpose.TX:
                return call_result.RemoteStartTransaction(status="Rejected")
            p.profiles.install(c.id, prof)
        plugged = c.ev
        if plugged is not None:  # already plugged: the remote start authorises it
            p._spawn(p._remote_start_plugged(c, plugged, id_tag))
        else:
            p.plug_in(c.id, id_token=id_tag, remote=True)
        return call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int) -> Any:
        ok = self.p16.stop_transaction(str(transaction_id), "Remote")
        return call_result.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

    @on("Reset")
    def on_reset(self, type: str) -> Any:
        return call_result.Reset(status="Accepted")

    @after("Reset")
    def after_reset(self, type: str) -> None:  # after the answer has gone out
        self.p16._spawn(self.p16.reboot("HardReset" if type == "Hard" else "SoftReset"))

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str) -> Any:
        if connector_id > len(self.p16.connectors):
            return call_result.ChangeAvailability(status="Rejected")
        return call_result.ChangeAvailability(
            status=self.p16.set_available(connector_id, type == "Operative")
        )

    @on("UnlockConnector")
    def on_unlock(self, connector_id: int) -> Any:
        p = self.p16
        if not 1 <= connector_id <= len(p.connectors):
            return call_result.UnlockConnector(status="NotSupported")
        p.unplug(connector_id, "UnlockCommand")
        return call_result.UnlockConnector(status="Unlocked")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        p = self.p16
        if connector_id is not None and not 0 <= connector_id <= len(p.connectors):
            return call_result.TriggerMessage(status="Rejected")
        cons = [p.connector(connector_id)] if connector_id else p.connectors
        if requested_message == "BootNotification":
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
        elif requested_message == "FirmwareStatusNotification":
            p._spawn(p._guard(p._send_firmware_status("Idle", None)))
        elif requested_message == "DiagnosticsStatusNotification":
            p._spawn(p._guard(p._send_log_status("Idle", None)))
        else:
            return call_result.TriggerMessage(status="NotImplemented")
        return call_result.TriggerMessage(status="Accepted")

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        cfg = self.p16.config
        keys = key or list(cfg.values)
        known = [
            {"key": k, "readonly": k in cfg.readonly, "value": cfg.values[k]} for k in keys if k in cfg.values
        ]
        unknown = [k for k in keys if k not in cfg.values]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str) -> Any:
        return call_result.ChangeConfiguration(status=self.p16.set_config(key, value))

    @on("ClearCache")
    def on_clear_cache(self) -> Any:
        return call_result.ClearCache(status="Accepted")

    @on("UpdateFirmware")
    def on_update_firmware(self, location: str, retrieve_date: str, **_: Any) -> Any:
        start = datetime.fromisoformat(retrieve_date.replace("Z", "+00:00"))
        self.p16._spawn(
            self.p16.firmware_flow(["Downloading", "Downloaded", "Installing", "Installed"], None, start)
        )
        return call_result.UpdateFirmware()

    @on("GetDiagnostics")
    def on_get_diagnostics(self, location: str, **_: Any) -> Any:
        self.p16._spawn(self.p16.log_flow(None))
        name = f"{self.p16.spec.id}-{self.p16.clock.now():%Y%m%d%H%M%S}.log"
        return call_result.GetDiagnostics(file_name=name)

    @on("SendLocalList")
    def on_send_local_list(
        self, list_version: int, update_type: str, local_authorization_list: list[Any] | None = None
    ) -> Any:
        entries = [
            (e["id_tag"], (e.get("id_tag_info") or {}).get("status")) for e in local_authorization_list or []
        ]
        self.p16.apply_local_list(list_version, update_type == "Full", entries)
        return call_result.SendLocalList(status="Accepted")

    @on("GetLocalListVersion")
    def on_get_local_list_version(self) -> Any:
        return call_result.GetLocalListVersion(list_version=self.p16.local_list_version)

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        return call_result.SetChargingProfile(status=self.p16.set_profile(connector_id, cs_charging_profiles))

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
    ) -> Any:
        n = self.p16.profiles.clear(
            id,
            connector_id,
            PURPOSE_NAMES[charging_profile_purpose] if charging_profile_purpose else None,
            stack_level,
        )
        return call_result.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None
    ) -> Any:
        p = self.p16
        if not 0 <= connector_id <= len(p.connectors):
            return call_result.GetCompositeSchedule(status="Rejected")
        unit: RateUnit = "A" if charging_rate_unit == "A" else "W"
        start, points = p.composite(connector_id, duration)
        periods = [
            {"start_period": int(off), "limit": round(p.profiles.electrical.to_unit(w, unit), 1)}
            for off, w in points
        ]
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=ts(start),
            charging_schedule={
                "duration": duration,
                "start_schedule": ts(start),
                "charging_rate_unit": unit,
                "charging_schedule_period": periods,
            },
        )

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return call_result.DataTransfer(status="UnknownVendorId")


class Pile16(Pile):
    version = "1.6"

    def make_cp(self, ws: ClientConnection) -> ChargePoint16:
        return ChargePoint16(self, ws)

    def _cp(self) -> ChargePoint16:
        cp = self.cp
        if cp is None or not self.online:
            raise ConnectionError("offline")
        assert isinstance(cp, ChargePoint16)
        return cp

    def parse(self, raw: dict[str, Any], tx_id: str | None = None) -> Any:
        return self.from_server(
            parse_profile(
                raw, schedule=raw["charging_schedule"], installed_at=self.clock.now(), transaction_id=tx_id
            )
        )

    def set_profile(self, connector_id: int, raw: dict[str, Any]) -> str:
        if not 0 <= connector_id <= len(self.connectors):
            return "Rejected"
        prof = self.parse(raw)
        if prof.stack_level > self.profiles.max_stack_level:
            return "Rejected"
        if prof.purpose == Purpose.STATION_MAX and connector_id != 0:
            return "Rejected"
        if prof.purpose == Purpose.TX:
            s = self.connector(connector_id).session if connector_id else None
            if s is None or (prof.transaction_id is not None and prof.transaction_id != s.tx_id):
                return "Rejected"  # 1.6 3.13.4: a TxProfile needs a running transaction
        self.advance(self.clock.now())
        self.profiles.install(connector_id, prof)
        return "Accepted"

    def composite(self, connector_id: int, duration: int) -> tuple[datetime, list[tuple[float, float]]]:
        now = self.clock.now()
        s = self.connector(connector_id).session if connector_id else None
        cap = (
            self.spec.max_power_w
            if connector_id == 0
            else min(self.spec.per_connector_w, self.spec.max_power_w)
        )
        return now, self.profiles.composite(
            connector_id, now, duration, cap, s.started_at if s else None, s.tx_id if s else None
        )

    async def _remote_start_plugged(self, c: Connector, ev: Ev, id_tag: str) -> None:
        ev.id_token = id_tag
        if c.session is None and c.ev is ev:
            self.start_session(c, ev, id_tag)

    async def _send_boot(self) -> tuple[str, float]:
        s = self.spec
        r = await self._cp().call(
            call.BootNotification(
                charge_point_model=s.model_name[:20],
                charge_point_vendor=s.vendor[:20],
                charge_point_serial_number=s.id[:25],
                firmware_version=s.firmware[:50],
            )
        )
        if r is None:
            return "Rejected", 0.0
        return str(r.status), float(r.interval)

    async def _send_heartbeat(self) -> None:
        await self._cp().call(call.Heartbeat())

    async def _send_status(self, connector: Connector | None) -> None:
        status = "Available" if connector is None else connector.status
        await self._cp().call(
            call.StatusNotification(
                connector_id=0 if connector is None else connector.id,
                error_code="NoError",
                status=status,
                timestamp=ts(self.clock.now()),
            )
        )

    async def _send_authorize(self, token: str) -> bool:
        r = await self._cp().call(call.Authorize(id_tag=token))
        return r is not None and r.id_tag_info.get("status") == "Accepted"

    def _meter_value(self, msg: TxMessage, context: str) -> list[Any]:
        return [
            {
                "timestamp": ts(msg.ts),
                "sampled_value": _sampled(
                    msg.meter_wh, msg.power_w, msg.soc_pct, self.spec.volts, self.spec.n_phases, context
                ),
            }
        ]

    async def _send_tx(self, msg: TxMessage) -> None:
        cp = self._cp()
        s = msg.session
        if msg.kind == "start":
            r = await cp.call(
                call.StartTransaction(
                    connector_id=s.connector_id,
                    id_tag=s.id_token[:20],
                    meter_start=msg.meter_wh,
                    timestamp=ts(msg.ts),
                )
            )
            if r is None:
                self.counters.tx_errors += 1
                return
            s.tx_id = str(r.transaction_id)
            if r.id_tag_info.get("status") != "Accepted" and not s.ended:
                self._stop_session(self.connector(s.connector_id), "DeAuthorized")
        elif msg.kind == "update":
            if s.tx_id is None:
                return  # the start was refused: nothing to attach them to
            await cp.call(
                call.MeterValues(
                    connector_id=s.connector_id,
                    transaction_id=int(s.tx_id),
                    meter_value=self._meter_value(msg, "Sample.Periodic"),
                )
            )
        else:
            if s.tx_id is None:
                return
            reason = msg.reason if msg.reason in REASONS_16 else "Other"
            await cp.call(
                call.StopTransaction(
                    meter_stop=msg.meter_wh,
                    timestamp=ts(msg.ts),
                    transaction_id=int(s.tx_id),
                    reason=reason,
                    id_tag=s.id_token[:20],
                    transaction_data=self._meter_value(msg, "Transaction.End"),
                )
            )

    async def _send_idle_meter_values(self, connector: Connector, trigger: bool = False) -> None:
        self.advance(self.clock.now())
        s = connector.session
        mv = {
            "timestamp": ts(self.clock.now()),
            "sampled_value": _sampled(
                int(connector.energy_wh),
                connector.power_w,
                s.ev.soc_pct if s else None,
                self.spec.volts,
                self.spec.n_phases,
                "Trigger" if trigger else "Sample.Periodic",
            ),
        }
        tx = int(s.tx_id) if s is not None and s.tx_id is not None else None
        await self._cp().call(
            call.MeterValues(connector_id=connector.id, transaction_id=tx, meter_value=[mv])
        )

    async def _send_firmware_status(self, status: str, request_id: int | None) -> None:
        await self._cp().call(call.FirmwareStatusNotification(status=status))

    async def _send_log_status(self, status: str, request_id: int | None) -> None:
        await self._cp().call(call.DiagnosticsStatusNotification(status=status))
