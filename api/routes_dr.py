"""Demand response under /api/v1/dr: events (create, amend, cancel, read with audit), the 15-minute
report with per-resource settlement, the capacity register, and the back-test of the program baselines.

Bad input is a 4xx, never a 500: the body is an ``EventSpec`` (422 for a window off the 15-minute
grid, two amounts, a scope without its selector), a scope naming no town, feeder or site is a 422, and
a change the lifecycle forbids (amending an active event, cancelling a completed one) is a 409.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, HTTPException, Path, Query, status
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.deps import ConnDep
from core.dr import event_writes
from core.dr.baselines import CHINA, PROGRAM_BASELINES, SLOT_MIN, SLOTS_PER_DAY
from core.dr.event_writes import COLUMNS
from core.dr.events import EventSpec, EventState
from core.dr.fleet import ScopeFilter, load_devices
from core.dr.program_baseline import backtest_history
from core.dr.report import capacity_register, event_report
from core.dr.resources import ResourceKind

router = APIRouter(prefix="/api/v1/dr", tags=["demand response"])

EventId = Annotated[int, Path(ge=1, le=2**31 - 1)]
ACTOR = SOURCE = "api"


class Event(BaseModel):
    id: int
    kind: str
    target_kw: float | None
    cap_kw: float | None
    floor_kw: float | None
    starts_at: datetime
    ends_at: datetime
    notice: str
    scope: str
    town_id: int | None
    feeder: str | None
    site_ids: list[int] | None
    baseline: str
    state: str
    reason: str | None
    source: str
    external_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class AuditEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any]


class Runtime(BaseModel):
    baseline_used: str
    baseline_note: str | None
    controller: str
    activated_at: datetime
    last_cycle_at: datetime | None
    cycles: int
    allocated_kw: float | None
    restored_at: datetime | None


class EventDetail(Event):
    audit: list[AuditEntry]
    runtime: Runtime | None


class CancelIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class IntervalOut(BaseModel):
    starts_at: datetime
    target_kw: float | None
    delivered_kw: float | None
    performance: float | None
    cycles: int


class ResourceOut(BaseModel):
    resource_id: str
    delivered_kwh: float
    committed_kwh: float | None
    performance: float | None


class ReportOut(BaseModel):
    event_id: int
    intervals: list[IntervalOut]
    resources: list[ResourceOut]
    delivered_kwh: float
    target_kwh: float


class CapacityOut(BaseModel):
    total_kw: float
    aim_kw: float
    meets_aim: bool
    resources: int
    towns: dict[str, dict[str, float]] = Field(description="town key -> resource kind -> kW available now")
    excluded: dict[str, str] = Field(description="device key -> why it is not counted")


async def _fetch(conn: psycopg.AsyncConnection[Any], event_id: int) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {COLUMNS} FROM dr_events WHERE id = %s", (event_id,))
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"event {event_id} not found")
    return row


async def _check_scope(conn: psycopg.AsyncConnection[Any], spec: EventSpec) -> None:
    """A scope must name something that exists (422 otherwise): the town, the feeder, every site."""
    if spec.town_id is not None:
        cur = await conn.execute("SELECT 1 FROM towns WHERE id = %s", (spec.town_id,))
        if await cur.fetchone() is None:
            raise HTTPException(422, f"unknown town_id {spec.town_id}")
    if spec.feeder is not None:
        cur = await conn.execute("SELECT 1 FROM sites WHERE feeder = %s LIMIT 1", (spec.feeder,))
        if await cur.fetchone() is None:
            raise HTTPException(422, f"no site on feeder {spec.feeder!r}")
    if spec.site_ids:
        cur = await conn.execute("SELECT id FROM sites WHERE id = ANY(%s)", (spec.site_ids,))
        missing = set(spec.site_ids) - {row[0] for row in await cur.fetchall()}
        if missing:
            raise HTTPException(422, f"unknown site_ids {sorted(missing)}")


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The database's refusals of a change: the lifecycle trigger's a 409, check violations a 422."""
    try:
        yield
    except psycopg.errors.RaiseException as err:
        raise HTTPException(status.HTTP_409_CONFLICT, err.diag.message_primary or str(err)) from err
    except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as err:
        raise HTTPException(422, err.diag.message_primary or str(err)) from err
    except psycopg.errors.UniqueViolation as err:
        raise HTTPException(status.HTTP_409_CONFLICT, err.diag.message_primary or str(err)) from err


@router.post("/events", response_model=Event, status_code=status.HTTP_201_CREATED)
async def create_event(body: EventSpec, conn: ConnDep) -> dict[str, Any]:
    await _check_scope(conn, body)
    with _refusals():
        return await event_writes.create_event(conn, body.model_dump(), ACTOR, source=SOURCE)


@router.put("/events/{event_id}", response_model=Event)
async def amend_event(
    event_id: EventId,
    body: EventSpec,
    conn: ConnDep,
    version: Annotated[int | None, Query(ge=1, description="Refuse (409) unless this is the version")] = None,
) -> dict[str, Any]:
    """Replace a scheduled event's request (an active one is cancelled and a new one created)."""
    current = await _fetch(conn, event_id)
    if version is not None and current["version"] != version:
        raise HTTPException(status.HTTP_409_CONFLICT, f"event {event_id} is at version {current['version']}")
    if current["state"] != EventState.SCHEDULED:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"event {event_id} is {current['state']}: not amendable"
        )
    await _check_scope(conn, body)
    with _refusals():
        row = await event_writes.amend_event(conn, event_id, body.model_dump(), ACTOR)
    if row is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"event {event_id} changed state meanwhile")
    return row


@router.post("/events/{event_id}/cancel", response_model=Event)
async def cancel_event(event_id: EventId, body: CancelIn, conn: ConnDep) -> dict[str, Any]:
    """Scheduled or active -> cancelled; the controller restores what an active event touched."""
    current = await _fetch(conn, event_id)
    if current["state"] not in (EventState.SCHEDULED, EventState.ACTIVE):
        raise HTTPException(status.HTTP_409_CONFLICT, f"event {event_id} is {current['state']}: already over")
    with _refusals():
        row = await event_writes.cancel_event(conn, event_id, ACTOR, body.reason)
    if row is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"event {event_id} changed state meanwhile")
    return row


@router.get("/events", response_model=list[Event])
async def list_events(
    conn: ConnDep,
    state: Annotated[EventState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM dr_events WHERE (%(state)s::text IS NULL OR state = %(state)s)"
            " ORDER BY starts_at DESC, id DESC LIMIT %(limit)s",
            {"state": state.value if state else None, "limit": limit},
        )
        return await cur.fetchall()


@router.get("/events/{event_id}", response_model=EventDetail)
async def get_event(event_id: EventId, conn: ConnDep) -> dict[str, Any]:
    event = await _fetch(conn, event_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT at, actor, action, before, after FROM dr_event_audit WHERE event_id = %s ORDER BY id",
            (event_id,),
        )
        audit = await cur.fetchall()
        await cur.execute("SELECT * FROM dr_event_runtime WHERE event_id = %s", (event_id,))
        runtime = await cur.fetchone()
    return event | {"audit": audit, "runtime": runtime}


@router.get("/events/{event_id}/report", response_model=ReportOut)
async def get_report(event_id: EventId, conn: ConnDep) -> ReportOut:
    event = await _fetch(conn, event_id)
    intervals, settlement = await event_report(conn, event)
    return ReportOut(
        event_id=event_id,
        intervals=[
            IntervalOut(
                starts_at=i.starts_at,
                target_kw=i.target_kw,
                delivered_kw=i.delivered_kw,
                performance=i.performance,
                cycles=i.cycles,
            )
            for i in intervals
        ],
        resources=[
            ResourceOut(
                resource_id=r.resource_id,
                delivered_kwh=r.delivered_kwh,
                committed_kwh=r.committed_kwh,
                performance=r.performance,
            )
            for r in settlement.resources
        ],
        delivered_kwh=settlement.delivered_kwh,
        target_kwh=settlement.target_kwh,
    )


@router.get("/capacity", response_model=CapacityOut)
async def capacity(conn: ConnDep, max_age_s: Annotated[float, Query(gt=0, le=3600)] = 60.0) -> CapacityOut:
    """Peak-shaving capacity available now (sustainable for an hour), per town and total, against the
    county's 18 MW aim; from the registry and live telemetry."""
    reg = await capacity_register(conn, max_age_s)
    return CapacityOut(
        total_kw=reg.total_kw,
        aim_kw=reg.aim_kw,
        meets_aim=reg.total_kw >= reg.aim_kw,
        resources=reg.resources,
        towns=reg.towns,
        excluded=reg.excluded,
    )


class BacktestMethodOut(BaseModel):
    method: str
    mape_pct: float | None = Field(description="Mean absolute percentage error over all tested intervals")
    cv_rmse_pct: float | None = Field(description="RMSE over the mean actual load")
    days_tested: int
    per_day_mape_pct: dict[date, float | None]
    skipped: dict[date, str] = Field(description="days the method could not be computed for, and why")


class BacktestOut(BaseModel):
    scope: str
    devices: list[str]
    start: time
    intervals: int
    days: list[date] = Field(description="the non-event working days tested (local dates)")
    methods: list[BacktestMethodOut]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


async def _backtest_devices(
    conn: psycopg.AsyncConnection[Any], site: str | None, device: str | None
) -> tuple[str, dict[int, str]]:
    """The scope's devices (id -> key): one device, or a site's flexible loads (what the controller
    baselines)."""
    if (site is None) == (device is None):
        raise HTTPException(422, "give exactly one of site, device")
    if device is not None:
        cur = await conn.execute("SELECT id, key FROM devices WHERE key = %s", (device,))
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device!r} not found")
        return f"device:{device}", {int(row[0]): str(row[1])}
    cur = await conn.execute("SELECT id FROM sites WHERE key = %s", (site,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"site {site!r} not found")
    loads = [
        d
        for d in await load_devices(conn, ScopeFilter(site_ids=(int(row[0]),)))
        if d.resource_kind is ResourceKind.FLEXIBLE_LOAD
    ]
    if not loads:
        raise HTTPException(422, f"site {site!r} has no operating flexible loads to baseline")
    return f"site:{site}", {d.id: d.key for d in loads}


@router.get("/baselines/backtest", response_model=BacktestOut)
async def backtest_baselines(
    conn: ConnDep,
    method: Annotated[
        list[str] | None,
        Query(description=f"program baselines (default all): {', '.join(PROGRAM_BASELINES)}"),
    ] = None,
    site: Annotated[str | None, Query(description="a site key: its flexible loads together")] = None,
    device: Annotated[str | None, Query(description="a device key")] = None,
    days: Annotated[int, Query(ge=1, le=60, description="how many non-event working days to test")] = 10,
    until: Annotated[date | None, Query(description="test the days before this one (default: today)")] = None,
    start: Annotated[time, Query(description="the pretended event's local start, on the 15-min grid")] = time(
        17, 0
    ),
    intervals: Annotated[
        int, Query(ge=1, le=SLOTS_PER_DAY, description="its length in 15-min intervals")
    ] = 4,
) -> BacktestOut:
    """Each program baseline back-tested on recent days without an event: what it would have predicted
    for the window against what the scope really drew (from the 15-minute rollup)."""
    unknown = sorted(set(method or ()) - set(PROGRAM_BASELINES))
    if unknown:
        raise HTTPException(422, f"unknown baseline(s) {unknown}; known: {sorted(PROGRAM_BASELINES)}")
    if start.second or start.microsecond or start.minute % SLOT_MIN:
        raise HTTPException(422, f"start must be on the {SLOT_MIN}-minute grid")
    start_slot = (start.hour * 60 + start.minute) // SLOT_MIN
    if start_slot + intervals > SLOTS_PER_DAY:
        raise HTTPException(422, "the window must end by midnight")
    scope, devices = await _backtest_devices(conn, site, device)
    until = until or datetime.now(CHINA).date()
    if until > datetime.now(CHINA).date() + timedelta(days=1):
        raise HTTPException(422, "until is in the future")
    result = await backtest_history(
        conn,
        list(devices),
        list(dict.fromkeys(method or ())),
        days,
        until,
        start_slot,
        start_slot + intervals,
    )
    return BacktestOut(
        scope=scope,
        devices=sorted(devices.values()),
        start=start,
        intervals=intervals,
        days=list(result.days),
        methods=[
            BacktestMethodOut(
                method=name,
                mape_pct=_finite(report.mape_pct),
                cv_rmse_pct=_finite(report.cv_rmse_pct),
                days_tested=len(report.days),
                per_day_mape_pct={d: _finite(v) for d, v in report.per_day_mape_pct.items()},
                skipped=report.skipped,
            )
            for name, report in result.reports.items()
        ],
    )
