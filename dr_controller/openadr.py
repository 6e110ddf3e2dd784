"""Lishui as an OpenADR 2.0b VEN (openleadr's client): a standard VTN drives the county.

The VEN registers with the VTN (``settings.openadr``), polls it, and answers every event:

- the event is mapped onto Lishui's event model (``openadr_mapping``: signal, intervals, targets ->
  scope), and Lishui opts in when the scope has the capacity (``openadr_capacity``: now, or by the
  day-ahead register for a county-wide peak-shaving part on a later day that has forecasts), creating
  one ``dr_events`` row per part (``core.dr.event_writes``) with actor and source ``openadr:{vtn id}``
  (audited); the controller then runs it like any other event;
- a modification (a higher ``modificationNumber``) amends a scheduled part, or cancels an active part
  and replaces it; a part no longer asked is cancelled; a cancellation cancels every part;
- otherwise (no capacity, a malformed or unsupported event) Lishui opts out: the reason is stored in
  ``openadr_responses`` and logged, and an ``oadrCreateOpt`` carries the OpenADR optReason to the VTN
  (openleadr's oadrCreatedEvent has no room for one). A modification Lishui opts out of cancels what an
  earlier version of the event created.

Every answer is stored with the modification number it answers, so a restarted VEN answers a re-sent
event the same way and never acts on a stale version.

The VEN offers one TELEMETRY_USAGE report with two values, from the database: ``load_kw``, the county's
net load of the responsive resources now (loads and charging minus hydro output and storage discharge,
the controller's aggregate), and ``delivered_kw``, the delivered response of the VTN's active events
(their latest 15-minute interval in ``core.dr.report.event_report``).

CLI: ``lishui openadr`` (``core.service.run(lambda: run_ven(settings))``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from openleadr import OpenADRClient, enums, objects
from psycopg_pool import AsyncConnectionPool

from core.dr import event_writes
from core.dr.baselines import Calendar
from core.dr.events import EventSpec
from core.dr.fleet import FleetSnapshot, ScopeFilter, TelemetryMeter
from core.dr.report import event_report
from core.settings import Settings
from dr_controller import openadr_store as ostore
from dr_controller.controller import PRODUCING_KINDS, Clock, WallClock, spec_of
from dr_controller.openadr_capacity import capacity_for
from dr_controller.openadr_mapping import (
    MUST_RUN,
    OPT_IN,
    OPT_OUT,
    Refusal,
    plan,
    required_kw,
    selector,
    to_specs,
)

__all__ = ["R_DELIVERED", "R_LOAD", "Ven", "net_load_kw", "run_ven"]

log = logging.getLogger(__name__)

R_LOAD = "load_kw"
R_DELIVERED = "delivered_kw"
LIVE_STATES = ("scheduled", "active")


def net_load_kw(snapshot: FleetSnapshot) -> float:
    """The scope's net load of the responsive resources now, as the controller aggregates it."""
    total = 0.0
    for rid, model in snapshot.resources.items():
        kw = snapshot.measured_kw(rid)
        total += -kw if model.kind in PRODUCING_KINDS else kw
    return total


def _scope_filter(scope: Mapping[str, Any]) -> ScopeFilter:
    sites = scope.get("site_ids")
    return ScopeFilter(scope.get("town_id"), scope.get("feeder"), tuple(sites) if sites else None)


def _part_number(external_id: str) -> int:
    """``{event}#{part}`` or ``{event}#{part}@{modification}`` -> part."""
    return int(external_id.rsplit("#", 1)[1].split("@", 1)[0])


def _same_request(a: EventSpec, b: EventSpec) -> bool:
    """Equal but for the notice (which says when the request came, not what it asks)."""
    return a.model_copy(update={"notice": b.notice}) == b


class Ven:
    """The VEN's decisions and reports; ``client()`` makes the openleadr client that calls them."""

    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool[Any], clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.cfg = settings.openadr
        self.pool = pool
        self.clock = clock or WallClock()
        self.tz = ZoneInfo(settings.dr.timezone)
        self.calendar = Calendar(frozenset(settings.dr.holidays), frozenset(settings.dr.make_up_workdays))
        self.vtn_id: str | None = None  # learnt from the VTN's messages
        self.oadr: OpenADRClient | None = None
        self._lock = asyncio.Lock()

    @property
    def source(self) -> str:
        """The events' source and the audit's actor."""
        return f"openadr:{self.vtn_id or 'unknown'}"

    def client(self) -> OpenADRClient:
        cfg = self.cfg
        client = OpenADRClient(
            ven_name=cfg.ven_name,
            vtn_url=cfg.vtn_url,
            cert=cfg.cert,
            key=cfg.key,
            passphrase=cfg.passphrase,
            vtn_fingerprint=cfg.vtn_fingerprint,
            show_fingerprint=False,
            ca_file=cfg.ca_file,
            ven_id=cfg.ven_id,
            disable_signature=not cfg.sign_messages,
            check_hostname=cfg.check_hostname,
        )
        client.add_handler("on_event", self.on_event)
        client.add_handler("on_update_event", self.on_event)
        client.add_hook("after_parse_xml", self._learn_vtn)
        rate = objects.SamplingRate(
            min_period=timedelta(seconds=cfg.report_min_period_s),
            max_period=timedelta(seconds=max(cfg.report_min_period_s, cfg.report_max_period_s)),
            on_change=False,
        )
        for r_id, callback, reading in (
            (R_LOAD, self.report_load, enums.READING_TYPE.DIRECT_READ),
            # Against the baseline: an estimate of what the load would have been.
            (R_DELIVERED, self.report_delivered, enums.READING_TYPE.ESTIMATED),
        ):
            client.add_report(
                callback,
                resource_id=cfg.ven_name,
                measurement="power_real",
                report_specifier_id=f"{cfg.ven_name}-telemetry",
                r_id=r_id,
                report_name=enums.REPORT_NAME.TELEMETRY_USAGE,
                reading_type=reading,
                report_duration=timedelta(hours=1),
                sampling_rate=rate,
                scale="k",
                unit="W",
            )
        self.oadr = client
        return client

    def _learn_vtn(self, message_type: str, payload: Mapping[str, Any]) -> None:
        vtn_id = payload.get("vtn_id") if isinstance(payload, Mapping) else None
        if vtn_id and vtn_id != self.vtn_id:
            self.vtn_id = str(vtn_id)
            log.info("VTN identified", extra={"vtn": self.vtn_id, "message_type": message_type})

    # -- events ------------------------------------------------------------------------------------

    async def on_event(self, event: dict[str, Any]) -> str:
        """openleadr's on_event and on_update_event: 'optIn' or 'optOut'."""
        async with self._lock:
            try:
                async with self.pool.connection() as conn:
                    return await self._answer(conn, event)
            except Exception:  # nothing recorded, nothing created: the VTN hears no
                log.exception("OpenADR event not handled; opting out", extra={"vtn": self.vtn_id})
                return OPT_OUT

    async def _answer(self, conn: psycopg.AsyncConnection[Any], event: dict[str, Any]) -> str:
        descriptor = event["event_descriptor"]
        event_id = str(descriptor["event_id"])
        modification = int(descriptor.get("modification_number") or 0)
        status = str(descriptor.get("event_status") or "")
        vtn = self.vtn_id or "unknown"
        previous = await ostore.last_answer(conn, vtn, event_id)
        if previous is not None and previous.modification_number >= modification:
            return previous.opt  # re-sent (or stale): the same answer, nothing done again
        extra = {"vtn": vtn, "vtn_event": event_id, "modification": modification}
        if status == enums.EVENT_STATUS.CANCELLED:
            cancelled = await self._cancel_parts(
                conn, event_id, f"cancelled by the VTN (modification {modification})"
            )
            opt = previous.opt if previous is not None else OPT_IN
            await ostore.record_answer(
                conn, vtn, event, opt, reason="cancelled by the VTN", dr_event_ids=cancelled
            )
            log.info("OpenADR event cancelled", extra=extra | {"events": cancelled})
            return opt
        if status == enums.EVENT_STATUS.COMPLETED:
            return previous.opt if previous is not None else OPT_IN
        try:
            ids = await self._accept(conn, event, event_id, modification)
        except Refusal as refusal:
            cancelled = []
            if previous is not None:
                reason = f"opted out of modification {modification}: {refusal.text}"
                cancelled = await self._cancel_parts(conn, event_id, reason)
            await ostore.record_answer(
                conn,
                vtn,
                event,
                OPT_OUT,
                opt_reason=refusal.opt_reason,
                reason=refusal.text,
                dr_event_ids=cancelled,
            )
            log.warning(
                "opted out of an OpenADR event",
                extra=extra
                | {"reason": refusal.text, "opt_reason": refusal.opt_reason, "cancelled": cancelled},
            )
            await self._send_opt_reason(event_id, modification, refusal)
            return OPT_OUT
        await ostore.record_answer(conn, vtn, event, OPT_IN, dr_event_ids=ids)
        log.info("opted in to an OpenADR event", extra=extra | {"events": ids})
        return OPT_IN

    async def _accept(
        self, conn: psycopg.AsyncConnection[Any], event: Mapping[str, Any], event_id: str, modification: int
    ) -> list[int]:
        """Map, check capacity, and make the database say what the event asks; raises Refusal."""
        scope = await ostore.resolve_scope(conn, selector(event.get("targets")))
        snapshot = await TelemetryMeter(conn, _scope_filter(scope), self.cfg.telemetry_max_age_s).snapshot()
        net = net_load_kw(snapshot)
        parts = plan(
            event, levels_kw=self.cfg.simple_levels_kw, net_load_kw=net, max_hours=self.cfg.max_event_h
        )
        now = self.clock.now()
        specs = to_specs(parts, scope, now=now, tz=self.tz, baseline=self.settings.dr.default_baseline)
        for number, spec in specs.items():
            need = required_kw(parts[number].ask, net)
            if need <= 0:
                continue  # a cap above (floor below) the load now: nothing to give yet
            have = await capacity_for(
                conn, snapshot, spec, now, calendar=self.calendar, max_age_s=self.cfg.telemetry_max_age_s
            )
            if have.kw < self.cfg.capacity_margin * need:
                minutes = (spec.ends_at - max(spec.starts_at, now)).total_seconds() / 60
                raise Refusal(
                    f"asks {need:.0f} kW ({spec.direction.value}) from {spec.starts_at.isoformat()} for"
                    f" {minutes:.0f} min; {have.kw:.0f} kW available in scope {have.basis}",
                    MUST_RUN,
                )
        return await self._reconcile(conn, event_id, modification, specs)

    async def _reconcile(
        self,
        conn: psycopg.AsyncConnection[Any],
        event_id: str,
        modification: int,
        specs: dict[int, EventSpec],
    ) -> list[int]:
        """One live Lishui event per part asked: kept if it asks the same, amended while scheduled,
        replaced once active; parts no longer asked are cancelled."""
        rows = await ostore.parts_of(conn, self.source, event_id)
        live = {_part_number(r["external_id"]): r for r in rows if r["state"] in LIVE_STATES}
        keys = {r["external_id"] for r in rows}
        why = f"VTN modification {modification}"
        for number, gone in live.items():
            if number not in specs:
                await event_writes.cancel_event(conn, gone["id"], self.source, f"removed by {why}")
        ids = []
        for number, spec in sorted(specs.items()):
            row = live.get(number)
            if row is not None:
                if _same_request(spec, spec_of(row)):
                    ids.append(row["id"])
                    continue
                if row["state"] == "scheduled" and await event_writes.amend_event(
                    conn, row["id"], spec.model_dump(), self.source
                ):
                    ids.append(row["id"])
                    continue
                await event_writes.cancel_event(conn, row["id"], self.source, f"replaced by {why}")
            key = f"{event_id}#{number}"
            if key in keys:
                key = f"{key}@{modification}"
            created = await event_writes.create_event(
                conn, spec.model_dump(), self.source, source=self.source, external_id=key
            )
            ids.append(int(created["id"]))
        return ids

    async def _cancel_parts(
        self, conn: psycopg.AsyncConnection[Any], event_id: str, reason: str
    ) -> list[int]:
        done = []
        for row in await ostore.parts_of(conn, self.source, event_id):
            if row["state"] in LIVE_STATES and await event_writes.cancel_event(
                conn, row["id"], self.source, reason
            ):
                done.append(int(row["id"]))
        return done

    async def _send_opt_reason(self, event_id: str, modification: int, refusal: Refusal) -> None:
        if not self.cfg.send_opt_reasons or self.oadr is None:
            return
        try:
            await self.oadr.create_opt(
                opt_type=OPT_OUT,
                opt_reason=refusal.opt_reason,
                targets=[{"ven_id": self.oadr.ven_id}],
                event_id=event_id,
                modification_number=modification,
            )
        except Exception as err:  # the opt-out itself still goes out in oadrCreatedEvent
            log.warning("oadrCreateOpt not delivered", extra={"vtn_event": event_id, "error": repr(err)})

    # -- reports -----------------------------------------------------------------------------------

    async def report_load(self) -> float | list[tuple[datetime, float]]:
        try:
            async with self.pool.connection() as conn:
                snapshot = await TelemetryMeter(conn, ScopeFilter(), self.cfg.telemetry_max_age_s).snapshot()
                return round(net_load_kw(snapshot), 1)
        except (psycopg.Error, OSError) as err:
            log.warning("load report skipped", extra={"error": repr(err)})
            return []  # openleadr sends no value for this sample

    async def report_delivered(self) -> float | list[tuple[datetime, float]]:
        try:
            async with self.pool.connection() as conn:
                total = 0.0
                for row in await ostore.live_events(conn, self.source):
                    intervals, _ = await event_report(conn, row)
                    measured = [i.delivered_kw for i in intervals if i.delivered_kw is not None]
                    total += measured[-1] if measured else 0.0
                return round(total, 1)
        except (psycopg.Error, OSError) as err:
            log.warning("delivered report skipped", extra={"error": repr(err)})
            return []


def _pool(settings: Settings) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        settings.db.dsn,
        min_size=1,
        max_size=3,
        kwargs={"autocommit": True, "application_name": "lishui-openadr"},
        open=False,
        check=AsyncConnectionPool.check_connection,
    )


async def _stop(client: OpenADRClient) -> None:
    if client.client_session is not None:  # no request made: nothing started
        await client.stop()


async def run_ven(settings: Settings, *, clock: Clock | None = None) -> None:
    """Register with the VTN (retrying until it answers), then serve its events and reports until
    cancelled. openleadr re-registers by itself when the VTN asks it to."""
    cfg = settings.openadr
    if (cfg.cert is None) != (cfg.key is None) or (cfg.cert is not None and cfg.ca_file is None):
        # openleadr's client uses the pair for TLS as well as for signing, and needs the CA for TLS.
        raise ValueError("openadr: give cert and key together, and the VTN's CA as ca_file")
    if log.getEffectiveLevel() > logging.DEBUG:
        # openleadr logs every report sample at INFO (and one of its calls mis-formats at INFO).
        logging.getLogger("openleadr").setLevel(logging.WARNING)
    async with _pool(settings) as pool:
        ven = Ven(settings, pool, clock)
        while True:
            client = ven.client()
            try:
                await client.run()
                if client.registration_id is not None:
                    log.info("registered with the VTN", extra={"vtn": ven.vtn_id, "ven_id": client.ven_id})
                    await asyncio.get_running_loop().create_future()  # serve until cancelled
                log.warning("VTN registration failed; retrying", extra={"vtn_url": settings.openadr.vtn_url})
            except (OSError, TypeError, KeyError, ValueError) as err:  # openleadr on an odd answer
                log.warning("VTN registration failed; retrying", extra={"error": repr(err)})
            finally:
                await _stop(client)
            await asyncio.sleep(settings.openadr.register_retry_s)
