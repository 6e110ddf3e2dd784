"""What every pile connection does, whatever its OCPP version: lifecycle checks at boot, authorisation,
transactions, telemetry, status and events. ``v16.Pile16`` and ``v201.Pile201`` translate their
version's messages into these calls."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg_pool import AsyncConnectionPool

from core.charging import registry, sessions
from core.charging.registry import AuthResult, BootDecision, BootStatus, PileAuth
from core.payloads import DeviceEvent, DeviceState, Sample, Status, TelemetryBatch, utcnow
from core.settings import Settings
from core.topics import Channel, topic
from ocpp_server import metrics
from ocpp_server.bus import Bus
from ocpp_server.measurands import PileMeter, parse_ts, sample_metrics
from ocpp_server.rpc import OcppConnection, SpecError
from ocpp_server.settings import OcppSettings
from ocpp_server.writes import BootDecider, ConnectionNotes, StatusWriter

if TYPE_CHECKING:
    from ocpp_server.server import Hub

log = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    ocpp: OcppSettings
    pool: AsyncConnectionPool
    bus: Bus
    node: str
    hub: Hub
    statuses: StatusWriter
    connections: ConnectionNotes
    boots: BootDecider
    # per-pile telemetry seq, kept across reconnects to this node
    seqs: dict[str, int] = field(default_factory=dict)


class Pile(OcppConnection):
    """One connected pile. Version subclasses add the ``@on`` handlers and the command builders."""

    # Actions a pile that is not accepted may still send (the rest get SecurityError + a violation).
    ALLOWED_UNACCEPTED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ctx: Context, auth: PileAuth, websocket: Any) -> None:
        super().__init__(auth.ocpp_id, websocket, response_timeout=ctx.ocpp.call_timeout_s)
        self.ctx = ctx
        self.auth = auth
        self.lifecycle = auth.lifecycle
        self.meter = PileMeter()
        self.booted: BootDecision | None = None
        self._statuses: dict[tuple[int, int], tuple[str, str | None]] = {}

    @property
    def key(self) -> str:
        return self.auth.key

    @property
    def version(self) -> str:
        return self._ocpp_version

    @property
    def operable(self) -> bool:
        return self.lifecycle in registry.OPERABLE and (
            self.booted is None or self.booted.status is BootStatus.ACCEPTED
        )

    def topic(self, channel: Channel) -> str:
        return topic(self.auth.site_key, self.auth.key, channel, self.ctx.settings.topic_root)

    # ---------------------------------------------------------------------------- connection life

    async def on_connected(self) -> None:
        self.ctx.connections.put(self.auth.device_id, self.version, self.ctx.node, self._lifecycle_now)
        if self.operable:
            self.publish_status(DeviceState.ONLINE, "connected")

    def _lifecycle_now(self, lifecycle: str) -> None:
        if self.booted is None:  # the handshake's auth row may be a cached one
            self.lifecycle = lifecycle

    def on_disconnected(self, replaced: bool) -> None:
        if not replaced:
            self.publish_status(DeviceState.OFFLINE, "disconnected")

    # ------------------------------------------------------------------------------------ publishing

    def publish_status(self, state: DeviceState, reason: str | None = None) -> None:
        self.ctx.bus.publish(
            self.topic(Channel.STATUS), Status(state=state, reason=reason, source=self.ctx.node), retain=True
        )

    def publish_event(self, kind: str, data: Mapping[str, Any], ts: datetime | None = None) -> None:
        self.ctx.bus.publish(
            self.topic(Channel.EVENT), DeviceEvent(kind=kind, ts=ts or utcnow(), data=dict(data))
        )

    def publish_meter_values(self, connector: int, meter_values: Sequence[Mapping[str, Any]]) -> float | None:
        """Meter values -> one TelemetryBatch (QoS 1). Returns the last energy register seen (Wh)."""
        samples: list[Sample] = []
        energy: float | None = None
        for mv in meter_values:
            try:
                ts = parse_ts(str(mv["timestamp"]))
            except (KeyError, ValueError):
                continue
            values = sample_metrics(mv.get("sampled_value") or ())
            if "energy_import_wh" in values:
                energy = values["energy_import_wh"]
            if values:
                samples.append(Sample(ts=ts, values=self.meter.update(connector, values)))
        if samples:
            seq = self.ctx.seqs.get(self.key, 0)
            self.ctx.seqs[self.key] = seq + 1
            self.ctx.bus.publish(self.topic(Channel.TELEMETRY), TelemetryBatch(seq=seq, samples=samples))
        return energy

    # --------------------------------------------------------------------------------------- lifecycle

    async def boot(
        self,
        vendor: str | None,
        model: str | None,
        serial: str | None,
        firmware: str | None,
        reason: str | None,
    ) -> BootDecision:
        boot = registry.BootInfo(self.version, vendor, model, serial, firmware, reason)
        decision = await self.ctx.boots.decide(self.auth.device_id, boot)
        self.booted = decision
        self.lifecycle = decision.lifecycle
        log.info(
            "boot", extra={"pile": self.key, "status": decision.status.value, "lifecycle": decision.lifecycle}
        )
        if decision.violation:
            metrics.VIOLATIONS.labels(decision.violation).inc()
            log.warning(
                "lifecycle violation",
                extra={"pile": self.key, "kind": decision.violation, "lifecycle": decision.lifecycle},
            )
            self.publish_event(
                "violation",
                {
                    "kind": decision.violation,
                    "lifecycle": decision.lifecycle,
                    "answer": decision.status.value,
                },
            )
            self.publish_status(
                DeviceState.OFFLINE, f"boot {decision.status.value.lower()}: {decision.lifecycle}"
            )
        else:
            self.publish_status(DeviceState.ONLINE, "boot accepted")
        return decision

    async def require_operable(self, action: str) -> None:
        """SecurityError (and a violation) for a transaction-related message from a pile not accepted."""
        if self.operable or action in self.ALLOWED_UNACCEPTED:
            return
        async with self.ctx.pool.connection() as conn:
            self.lifecycle = await registry.lifecycle_of(conn, self.auth.device_id)
            if self.operable:
                return
            kind = registry.decide(self.lifecycle)[1] or "operating_before_acceptance"
            await registry.record_violation(
                conn, self.auth.device_id, kind, self.lifecycle, {"message": action}
            )
        metrics.VIOLATIONS.labels(kind).inc()
        self.publish_event("violation", {"kind": kind, "lifecycle": self.lifecycle, "message": action})
        raise SpecError("SecurityError", f"pile is {self.lifecycle}, not accepted: {action} refused")

    async def authorize(self, token: str) -> AuthResult:
        async with self.ctx.pool.connection() as conn:
            return await registry.authorize(conn, token, self.auth.tenant_id)

    async def status_changed(
        self, evse_id: int, connector_id: int, status: str, error_code: str | None, ts: datetime | None
    ) -> None:
        """Remember and store (write-behind) a connector's status; an event when it changed."""
        key = (evse_id, connector_id)
        before = self._statuses.get(key)
        if before == (status, error_code):
            return
        self._statuses[key] = (status, error_code)
        where = (self.auth.device_id, evse_id, connector_id)
        self.ctx.statuses.put(where, status, error_code, ts or utcnow())
        if before is None or before[0] != status:
            self.publish_event(
                "status.changed",
                {
                    "evse_id": evse_id,
                    "connector_id": connector_id,
                    "status": status,
                    "previous": before[0] if before else None,
                    "error_code": error_code,
                },
                ts,
            )

    def transaction_event(self, outcome: sessions.TxOutcome, ts: datetime | None, **extra: Any) -> None:
        if outcome.duplicate:
            return
        data = {
            "transaction_id": outcome.ocpp_tx_id,
            "evse_id": outcome.evse_id,
            "id_token": outcome.id_token,
            **extra,
        }
        if outcome.started:
            metrics.TRANSACTIONS.labels("started").inc()
            self.publish_event("transaction.started", data, ts)
        if outcome.ended:
            metrics.TRANSACTIONS.labels("ended").inc()
            self.publish_event("transaction.ended", {**data, "energy_wh": outcome.energy_wh}, ts)

    # ------------------------------------------------------------------------------- operator side

    async def execute(self, op: str, args: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        """Carry out an operator command on the pile; returns the pile's answer. Raises
        ``UnknownOp``/``ValueError`` for bad input, TimeoutError, CallErrorReceived."""
        raise NotImplementedError

    async def apply_limit(self, watts: float, valid_until: datetime) -> dict[str, Any]:  # pragma: no cover
        """Send the pile its share of a site limit as a pile-wide profile valid until ``valid_until``."""
        raise NotImplementedError


class UnknownOp(ValueError):
    pass
