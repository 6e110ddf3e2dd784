"""One control cycle of the leader, read-decide-write (as OpenEMS's cycle worker): activate events whose
window began, complete ended ones and restore what they touched, and for each active event measure the
delivered response, allocate, and dispatch.

Closed loop: the allocator is asked for ``allocated_kw``, an integrator on the measured error:
``allocated += gain x (target - delivered)`` with ``gain < 1`` (0.4), held at the target during the
ramp-in (the first ``ramp_in_min`` event minutes, while hydro ramps and telemetry catches up, where
integrating would only wind up), and clamped to ``[0, windup x target]``. With the one-cycle delay of
telemetry the loop's poles stay inside the unit circle (|z| = sqrt(gain)), so a shortfall (a device
that under-delivers, a baseline drifting) is re-dispatched cycle by cycle without oscillating.
A command is re-sent only when its dispatch moved by more than a deadband or its hold needs renewing.

Two clocks: the *event clock* (``clock.now()``; the wall clock in production, a simulation's clock in
scenario tests) places cycles in the event's window; control interval, holds, expiries and telemetry
freshness are wall-clock seconds, because the gateway and the database count them so.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import psycopg

from core.dr.baselines import SLOT_MIN, Calendar, baseline_spec
from core.dr.events import EventSpec, EventState
from core.dr.fleet import (
    DeviceInfo,
    FleetSnapshot,
    LiveState,
    ScopeFilter,
    build_resources,
    load_devices,
    read_average_power,
    read_latest,
    restore_command,
)
from core.dr.program_baseline import METER_BEFORE, program_baseline
from core.dr.resources import DeviceCommand, Direction, FlexibleLoad, ResourceKind, Window
from core.dr.target import Target
from core.payloads import CommandResult, CommandStatus, utcnow
from core.settings import Settings
from dr_controller import metrics, store
from dr_controller.allocation import FlexibilityTable, allocate
from dr_controller.bus import CommandBus
from dr_controller.measure import Measurement, measure

__all__ = ["Clock", "Controller", "LoopTuning", "WallClock", "observed_response_kw"]

log = logging.getLogger(__name__)

PRODUCING_KINDS = (ResourceKind.HYDRO, ResourceKind.STORAGE)
UNDERDELIVERY = 0.8  # a resource giving less than this share of its dispatch is bounded by what it gives


class Clock(Protocol):
    """The event clock: ``now()`` and how many event seconds pass per wall second (``SimClock`` fits)."""

    @property
    def factor(self) -> float: ...

    def now(self) -> datetime: ...


class WallClock:
    factor = 1.0

    def now(self) -> datetime:
        return utcnow()


@dataclass(frozen=True, slots=True)
class LoopTuning:
    gain: float = 0.4
    ramp_in_min: float = 5.0  # event minutes after activation without integrating
    windup: float = 1.5  # allocated_kw never above this times the target
    deadband_share: float = 0.002  # of the target: smaller moves of one resource's dispatch are not sent
    max_age_s: float | None = None  # telemetry freshness (wall); default max(30, 3 control intervals)
    exclusion_s: float | None = None  # a failed resource sits out this long (wall); default 5 intervals
    cap_min: float = 10.0  # event minutes an under-delivering resource stays bounded by what it gave


@dataclass
class Sent:
    dispatch_kw: float
    wall: float


@dataclass
class EventRun:
    """What the leader keeps about one active event between cycles (rebuilt from the tables on takeover)."""

    event: store.EventRecord
    spec: EventSpec
    devices: dict[str, DeviceInfo]  # resource id -> device
    references: dict[str, store.Reference]
    load_baseline: np.ndarray | None  # the program baseline of the loads, kW per interval, if computed
    allocated_kw: float | None = None
    cycle: int = 0
    sent: dict[str, Sent] = field(default_factory=dict)
    excluded_until: dict[str, float] = field(default_factory=dict)
    # Resources that gave clearly less than dispatched: their bound, and until when (event clock).
    caps: dict[str, tuple[float, datetime]] = field(default_factory=dict)
    curtailed_since: dict[str, datetime] = field(default_factory=dict)
    activated_wall: float | None = None
    first_command_s: float | None = None

    @property
    def direction(self) -> Direction:
        return self.spec.direction


def _reports_raise(live: LiveState, device_id: int | None) -> bool:
    return device_id is not None and "load_raise_w" in live.get(device_id, {})


def observed_response_kw(
    ref: store.Reference, measured_kw: float, reported_kw: float | None, direction: Direction
) -> float:
    """What a resource gives in the event's direction: what it reports giving where it does (a
    flexible load's curtailment or raise in force), else its measurement against its reference."""
    if reported_kw is not None:
        return reported_kw
    grid_drop = measured_kw - ref.reference_kw if ref.produces else ref.reference_kw - measured_kw
    return grid_drop if direction is Direction.REDUCE else -grid_drop


def spec_of(row: dict[str, Any]) -> EventSpec:
    fields = EventSpec.model_fields
    return EventSpec.model_validate({k: v for k, v in row.items() if k in fields and v is not None})


class Controller:
    def __init__(
        self,
        settings: Settings,
        conn: psycopg.AsyncConnection[Any],
        bus: CommandBus,
        clock: Clock,
        name: str,
        tuning: LoopTuning = LoopTuning(),
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.bus = bus
        self.clock = clock
        self.name = name
        self.actor = f"dr_controller:{name}"
        self.tuning = tuning
        interval = settings.dr.control_interval_s
        self.max_age_s = tuning.max_age_s or max(30.0, 3 * interval)
        self.exclusion_s = tuning.exclusion_s or 5 * interval
        self.calendar = Calendar(frozenset(settings.dr.holidays), frozenset(settings.dr.make_up_workdays))
        self.runs: dict[int, EventRun] = {}
        self.pending: dict[str, tuple[int, str]] = {}  # command id -> (event id, resource id)
        self.first_command_s: dict[int, float] = {}  # event id -> activation to first publish (wall s)
        self.results: list[CommandResult] = []

    # -- the cycle ---------------------------------------------------------------------------------

    async def cycle(self) -> None:
        await self.apply_results()
        now = self.clock.now()
        for event_id in await store.cancel_missed(self.conn, now, self.actor):
            log.warning("event missed its window", extra={"event": event_id})
        for event in await store.due_events(self.conn, now):
            if await store.transition(
                self.conn, event.id, EventState.SCHEDULED, EventState.ACTIVE, self.actor
            ):
                await self._activate(event, now)
        active = await store.active_events(self.conn)
        target = delivered = 0.0
        for event in active:
            if now >= event.ends_at:
                await store.transition(
                    self.conn, event.id, EventState.ACTIVE, EventState.COMPLETED, self.actor
                )
                log.info("event completed", extra={"event": event.id})
                continue
            run = self.runs.get(event.id) or await self._resume(event)
            result = await self._control(run, now)
            target += result[0]
            delivered += result[1]
        for event_id in await store.events_to_restore(self.conn):
            await self._restore(event_id)
        live_ids = {e.id for e in active if now < e.ends_at}
        for event_id in [i for i in self.runs if i not in live_ids]:
            del self.runs[event_id]
        metrics.ACTIVE_EVENTS.set(len(live_ids))
        metrics.TARGET_KW.set(target)
        metrics.DELIVERED_KW.set(delivered)

    # -- activation and takeover -------------------------------------------------------------------

    async def _activate(self, event: store.EventRecord, now: datetime) -> None:
        started = time.perf_counter()
        spec = spec_of(event.row)
        devices = await load_devices(self.conn, ScopeFilter.from_event(event.row))
        live = await read_latest(self.conn, (d.id for d in devices), self.max_age_s)
        snap = build_resources(devices, live)
        program = baseline_spec(spec.baseline)
        before_s = program.before_min * 60 / max(self.clock.factor, 1e-9)
        load_ids = [
            snap.devices[r].id for r, m in snap.resources.items() if m.kind is ResourceKind.FLEXIBLE_LOAD
        ]
        averages = await read_average_power(self.conn, load_ids, before_s)
        references = {}
        for rid, model in snap.resources.items():
            produces = model.kind in PRODUCING_KINDS
            device = snap.devices[rid]
            ref = averages.get(device.id) if not produces else None
            references[rid] = store.Reference(
                rid,
                None if model.kind is ResourceKind.EV_CHARGING else device.id,
                model.kind.value,
                produces,
                ref if ref is not None else snap.measured_kw(rid),
            )
        baseline = await program_baseline(
            self.conn, spec.baseline, event.starts_at, event.ends_at, load_ids, self.calendar
        )
        used, note = baseline.used, baseline.note
        await store.save_activation(self.conn, event.id, self.name, now, used, note, references.values())
        run = EventRun(event, spec, snap.devices, references, baseline.values_kw, activated_wall=started)
        self.runs[event.id] = run
        log.info(
            "event activated",
            extra={
                "event": event.id,
                "resources": len(references),
                "excluded": len(snap.excluded),
                "baseline": used,
                "baseline_note": note,
            },
        )

    async def _resume(self, event: store.EventRecord) -> EventRun:
        """Take over an event another controller activated: its references and integrator from the
        tables; every touched resource is re-sent this cycle (which renews its hold)."""
        spec = spec_of(event.row)
        runtime = await store.load_runtime(self.conn, event.id)
        references = {r.resource_id: r for r in await store.load_references(self.conn, event.id)}
        devices = await load_devices(self.conn, ScopeFilter.from_event(event.row))
        by_resource = {d.key: d for d in devices} | {d.site: d for d in devices if d.kind == "charge_point"}
        if runtime is None:  # activated by a controller that died before saving: activate afresh
            await self._activate(event, self.clock.now())
            return self.runs[event.id]
        load_ids = [r.device_id for r in references.values() if not r.produces and r.device_id is not None]
        baseline = None
        if runtime["baseline_used"] != METER_BEFORE:  # the same history gives the same baseline
            program = await program_baseline(
                self.conn, spec.baseline, event.starts_at, event.ends_at, load_ids, self.calendar
            )
            baseline = program.values_kw
        run = EventRun(
            event,
            spec,
            {rid: by_resource[rid] for rid in references if rid in by_resource},
            references,
            baseline,
            allocated_kw=runtime["allocated_kw"],
            cycle=runtime["cycles"],
        )
        for rid in await store.touched_resources(self.conn, event.id):
            run.sent[rid] = Sent(math.nan, -math.inf)
        self.runs[event.id] = run
        log.warning("event taken over", extra={"event": event.id, "from": runtime["controller"]})
        return run

    # -- control -----------------------------------------------------------------------------------

    async def _control(self, run: EventRun, now: datetime) -> tuple[float, float]:
        run.cycle += 1
        wall = time.monotonic()
        live = await read_latest(self.conn, (d.id for d in run.devices.values()), self.max_age_s)
        # A load is pinned too when raising, unless its device reports the raise in force (see fleet):
        # without that report its load without our raise cannot be told from the measurement.
        pinned = {
            rid: r.reference_kw
            for rid, r in run.references.items()
            if r.produces
            or (
                run.direction is Direction.RAISE
                and r.kind == ResourceKind.FLEXIBLE_LOAD
                and not _reports_raise(live, r.device_id)
            )
        }
        curtailed_for = {rid: (now - t).total_seconds() / 60 for rid, t in run.curtailed_since.items()}
        snap = build_resources(run.devices.values(), live, pinned, curtailed_for)
        measured = {rid: snap.measured_kw(rid) for rid in snap.resources if rid in run.references}
        slot = int((now - run.event.starts_at).total_seconds() // (SLOT_MIN * 60))
        program = None
        if run.load_baseline is not None:
            program = float(run.load_baseline[min(slot, len(run.load_baseline) - 1)])
        m = measure(
            run.direction,
            {rid: (r.produces, r.reference_kw) for rid, r in run.references.items()},
            measured,
            program,
        )
        target = run.spec.target(m.net_baseline_kw).amount_kw
        self._cap_underdelivery(run, snap, now, m)
        run.allocated_kw = self._integrate(run, now, target, m)
        dispatch = self._allocate(run, snap, now, run.allocated_kw)
        await self._dispatch(run, snap, dispatch, now, wall)
        decided = time.monotonic()
        await store.record_cycle(
            self.conn,
            store.CycleRecord(
                run.event.id,
                now,
                run.cycle,
                target,
                m.delivered_kw,
                run.allocated_kw,
                m.load_baseline_kw,
                self.name,
                {rid: (m.per_resource_kw[rid], dispatch.get(rid, 0.0)) for rid in m.per_resource_kw},
            ),
        )
        metrics.CYCLES.inc()
        log.debug(
            "cycle",
            extra={
                "read_decide_write_s": round(decided - wall, 3),
                "record_s": round(time.monotonic() - decided, 3),
                "event": run.event.id,
                "cycle": run.cycle,
                "target_kw": round(target),
                "delivered_kw": round(m.delivered_kw),
                "allocated_kw": round(run.allocated_kw),
            },
        )
        return target, m.delivered_kw

    def _cap_underdelivery(self, run: EventRun, snap: FleetSnapshot, now: datetime, m: Measurement) -> None:
        """A resource giving clearly less than it was dispatched (a battery at its own reserve, a unit at
        its water limit) is bounded by what it gives, for a while: otherwise the integrator's extra
        allocation would keep landing on it and the shortfall would never be re-dispatched elsewhere.
        Flexible loads are judged by what they report (curtailment or raise in force, ``FleetSnapshot.
        reported_response_kw``), not against their reference, which their production profile drifts
        away from; a load that does not report its direction's amount is judged against its reference."""
        if now - run.event.starts_at < timedelta(minutes=self.tuning.ramp_in_min):
            return
        for rid, sent in run.sent.items():
            ref = run.references.get(rid)
            if (
                ref is None
                or not sent.dispatch_kw > 0
                or rid not in m.per_resource_kw
                or rid not in snap.devices
            ):
                continue
            reported = None if ref.produces else snap.reported_response_kw(rid, run.direction)
            response = observed_response_kw(ref, m.per_resource_kw[rid], reported, run.direction)
            if response < UNDERDELIVERY * sent.dispatch_kw - 1.0:
                run.caps[rid] = (max(0.0, response), now + timedelta(minutes=self.tuning.cap_min))
            elif response >= 0.95 * sent.dispatch_kw:
                run.caps.pop(rid, None)

    def _integrate(self, run: EventRun, now: datetime, target: float, m: Measurement) -> float:
        if run.allocated_kw is None or target <= 0:
            return target
        if now - run.event.starts_at < timedelta(minutes=self.tuning.ramp_in_min):
            return target
        allocated = run.allocated_kw + self.tuning.gain * (target - m.delivered_kw)
        return min(self.tuning.windup * target, max(0.0, allocated))

    def _allocate(
        self, run: EventRun, snap: FleetSnapshot, now: datetime, amount_kw: float
    ) -> dict[str, float]:
        wall = time.monotonic()
        window = Window(max((run.event.ends_at - now).total_seconds() / 60, 1e-3))
        usable = [
            rid
            for rid in snap.resources
            if rid in run.references and run.excluded_until.get(rid, -math.inf) <= wall
        ]
        flexibilities = []
        for rid in usable:
            last = run.sent.get(rid)
            dispatched = last.dispatch_kw if last is not None and math.isfinite(last.dispatch_kw) else 0.0
            flexibilities.append(snap.resources[rid].flexibility(run.direction, window, dispatched))
        table = FlexibilityTable.from_flexibilities(flexibilities)
        for i, rid in enumerate(usable):  # a load curtailed less than its minimum duration stays curtailed
            model = snap.resources[rid]
            since = run.curtailed_since.get(rid)
            if isinstance(model, FlexibleLoad) and since is not None:
                if (now - since).total_seconds() / 60 < model.min_duration_min:
                    table.lower[i] = min(table.upper[i], flexibilities[i].dispatched_kw)
            cap = run.caps.get(rid)
            if cap is not None and cap[1] > now:
                table.upper[i] = min(table.upper[i], cap[0])
                table.lower[i] = min(table.lower[i], table.upper[i])
        allocation = allocate(table, Target(run.direction, amount_kw))
        return allocation.by_resource(nonzero_only=False)

    async def _dispatch(
        self, run: EventRun, snap: FleetSnapshot, dispatch: dict[str, float], now: datetime, wall: float
    ) -> None:
        hold_s = self.settings.dr.hold_s
        deadband = max(1.0, self.tuning.deadband_share * (run.spec.target_kw or 1000.0))
        expires_at = utcnow() + timedelta(seconds=self.settings.dr.command_expiry_s)
        rows: list[store.DispatchRow] = []
        commands: list[DeviceCommand] = []
        for rid, kw in dispatch.items():
            last = run.sent.get(rid)
            # Generators and storage are pinned at their reference even with nothing to give: a battery
            # left to its own schedule would start charging mid-event and eat the response.
            if last is None and kw <= 0 and not run.references[rid].produces:
                continue
            if last is not None and abs(kw - last.dispatch_kw) < deadband and wall - last.wall < hold_s / 3:
                continue
            try:
                dc = snap.resources[rid].command(run.direction, kw, hold_s, expires_at)
            except (NotImplementedError, ValueError) as err:  # e.g. a load has no raise control
                run.excluded_until[rid] = math.inf
                log.warning("resource cannot be commanded", extra={"resource": rid, "reason": str(err)})
                continue
            commands.append(dc)
            rows.append(self._row(run, rid, dc, kw, now, restore=False))
            run.sent[rid] = Sent(kw, wall)
            if kw > 0:
                run.curtailed_since.setdefault(rid, now)
            else:
                run.curtailed_since.pop(rid, None)
        await self._send(run.event.id, rows, commands, "dispatch")
        if commands and run.first_command_s is None and run.activated_wall is not None:
            run.first_command_s = time.perf_counter() - run.activated_wall
            self.first_command_s[run.event.id] = run.first_command_s

    def _row(
        self, run: EventRun, rid: str, dc: DeviceCommand, kw: float, now: datetime, *, restore: bool
    ) -> store.DispatchRow:
        device = run.devices.get(rid)
        return store.DispatchRow(
            run.event.id,
            run.cycle,
            now,
            rid,
            None if device is None or dc.device != device.key else device.id,
            dc.site,
            dc.device,
            dc.command.op,
            dc.command.args,
            kw,
            restore,
            dc.command.id,
            self.name,
        )

    async def _send(
        self, event_id: int, rows: list[store.DispatchRow], commands: list[DeviceCommand], kind: str
    ) -> None:
        if not commands:
            return
        # Recorded before publishing, so a result can never arrive for a command the table lacks.
        await store.insert_dispatches(self.conn, rows)
        for row, dc in zip(rows, commands, strict=True):
            self.pending[dc.command.id] = (event_id, row.resource_id)
            await self.bus.publish(dc)
        metrics.COMMANDS.labels(kind).inc(len(commands))

    # -- the end -----------------------------------------------------------------------------------

    async def _restore(self, event_id: int) -> None:
        """Every resource the event touched back to its default (the holds would do it anyway, later)."""
        touched = await store.touched_resources(self.conn, event_id)
        event_row = (await store.event_by_id(self.conn, event_id)).row
        devices = await load_devices(self.conn, ScopeFilter.from_event(event_row))
        by_resource = {d.key: d for d in devices} | {d.site: d for d in devices if d.kind == "charge_point"}
        run = self.runs.get(event_id) or EventRun(
            store.EventRecord(event_row), spec_of(event_row), by_resource, {}, None
        )
        now = self.clock.now()
        rows, commands = [], []
        for rid in touched:
            device = by_resource.get(rid)
            dc = (
                None
                if device is None
                else restore_command(device, rid, self.settings.dr.hold_s, run.direction)
            )
            if dc is None:
                log.error(
                    "cannot restore resource: not in the registry", extra={"event": event_id, "resource": rid}
                )
                continue
            commands.append(dc)
            rows.append(self._row(run, rid, dc, 0.0, now, restore=True))
        await self._send(event_id, rows, commands, "restore")
        await store.mark_restored(self.conn, event_id, now)
        self.runs.pop(event_id, None)
        log.info("event restored", extra={"event": event_id, "resources": len(commands)})

    # -- results -----------------------------------------------------------------------------------

    async def on_result(self, result: CommandResult) -> None:
        """From the MQTT listener: only queued, so the cycle owns the connection (applied first thing)."""
        if result.id in self.pending:
            self.results.append(result)

    async def apply_results(self) -> None:
        results, self.results = self.results, []
        for result in results:
            await self._apply_result(result)

    async def _apply_result(self, result: CommandResult) -> None:
        owner = self.pending.pop(result.id, None)
        if owner is None:
            return
        metrics.RESULTS.labels(result.status.value).inc()
        await store.record_result(self.conn, result.id, result.status.value, result.detail)
        if result.status is CommandStatus.ACCEPTED:
            return
        event_id, rid = owner
        run = self.runs.get(event_id)
        if run is not None:
            # Out of the next allocations for a while; its share goes to the others next cycle.
            run.excluded_until[rid] = time.monotonic() + self.exclusion_s
            run.sent.pop(rid, None)
        log.warning(
            "command %s",
            result.status.value,
            extra={
                "event": event_id,
                "resource": rid,
                "status": result.status.value,
                "detail": result.detail,
            },
        )
