"""Demand response end to end on the simulated county: simulators → gateway → Mosquitto → ingest →
TimescaleDB → controller → commands back through the gateway to the simulators.

The simulators' clock runs 60 times faster than the wall (an event hour passes in a wall minute) and
the controller reads the same clock as its event clock; holds, expiries and the control interval are
wall seconds (the gateway counts them so). The fresh test database has no history, so the program
baseline (high 5 of 10, adjusted) falls back to meter-before (raw telemetry over the 15 event minutes
before activation) — the test checks the fallback is said, and measures against that baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from dr_harness import (
    Commands,
    fast_loop_settings,
    interval_response_from_telemetry,
    limited,
    next_boundary,
    record_commands,
    sim_sleep_until,
    wait_live,
)

from core.settings import Settings
from dr_controller.controller import LoopTuning
from dr_controller.service import run_dr_controller
from gateway.config import GatewayConfig
from gateway.service import run_gateway
from ingest.service import run_ingest
from lishui.composition import gateway_config, seed_dr_attributes, seed_registry
from simulators.clock import SimClock
from simulators.fleet import Fleet, serve_fleet
from simulators.scenario import Scenario, load_scenario

FACTOR = 60.0
# A Wednesday morning: the industrial load shapes are flat from 08:30 to 11:30.
START = datetime.fromisoformat("2026-07-15T09:02:00+08:00")
DR_KINDS = ("hydro", "load", "battery")
HOLD_S = 10.0


@dataclass
class County:
    settings: Settings
    fleet: Fleet
    scenario: Scenario
    clock: SimClock
    tiers: dict[str, int]  # device key -> effective tier
    hydro_initial_w: dict[str, float]  # each hydro unit's own setpoint before any command
    commands: Commands = field(default_factory=list)

    def dr_devices(self) -> list[str]:
        return [d.key for d in self.scenario.devices if d.kind in DR_KINDS]


def _gateway(scenario: Scenario, fleet: Fleet) -> GatewayConfig:
    # Only the devices demand response reads are polled every second; the rest at a gentler pace.
    config = gateway_config(scenario, fleet.endpoints, name=f"dr-{uuid.uuid4().hex[:6]}")
    kinds = {d.key: d.kind for d in scenario.devices}
    devices = [
        d if kinds[d.key] in DR_KINDS else d.model_copy(update={"poll_interval_s": 10.0})
        for d in config.devices
    ]
    return config.model_copy(update={"devices": devices})


@pytest.fixture(scope="module")
async def county(settings: Settings, db_dsn: str) -> AsyncIterator[County]:
    scenario = load_scenario("county")
    await seed_registry(settings, scenario)
    await seed_dr_attributes(settings, scenario)
    dr_settings = fast_loop_settings(settings, "dr", hold_s=HOLD_S)
    site_tier = {s.key: s.tier for s in scenario.sites}
    tiers = {d.key: d.tier if d.tier is not None else site_tier[d.site] for d in scenario.devices}
    clock = SimClock(factor=FACTOR, start=START)
    async with serve_fleet(scenario, base_port=0, clock=clock) as fleet:
        hydro = {k: d.physics.setpoint_w for k, d in fleet.devices.items() if d.kind == "hydro"}  # type: ignore[attr-defined]
        county = County(dr_settings, fleet, scenario, clock, tiers, hydro)
        async with asyncio.TaskGroup() as tg:
            services = [
                tg.create_task(run_ingest(dr_settings), name="ingest"),
                tg.create_task(run_gateway(dr_settings, _gateway(scenario, fleet)), name="gateway"),
                tg.create_task(record_commands(dr_settings, county.commands), name="spy"),
            ]
            try:
                await wait_live(db_dsn, county.dr_devices())
                yield county
            finally:
                for task in services:
                    task.cancel()


async def _create_event(dsn: str, starts_at: datetime, minutes: int, target_kw: float) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope)"
            " VALUES ('peak_shaving', %s, %s, %s, 'intraday', 'county') RETURNING id",
            (target_kw, starts_at, starts_at + timedelta(minutes=minutes)),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _state(conn: psycopg.AsyncConnection, event_id: int) -> str:
    cur = await conn.execute("SELECT state FROM dr_events WHERE id = %s", (event_id,))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


def _limited(county: County) -> dict[str, str]:
    return limited(county.fleet, county.dr_devices(), county.hydro_initial_w)


async def _until(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _controller(settings: Settings, name: str, clock: SimClock) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(
        run_dr_controller(settings, name=name, clock=clock, tuning=LoopTuning(max_age_s=15.0)), name=name
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_one_hour_18_mw_event_is_delivered_tier0_spared_and_everything_restored(
    county: County, db_dsn: str
) -> None:
    settings, clock = county.settings, county.clock
    starts_at = next_boundary(clock.now(), timedelta(minutes=16))  # 15 event minutes of meter-before
    event_id = await _create_event(db_dsn, starts_at, 60, 18_000.0)
    async with (
        _controller(settings, "scenario", clock),
        await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn,
    ):
        await sim_sleep_until(clock, starts_at + timedelta(minutes=60))
        deadline = time.monotonic() + 20
        while await _state(conn, event_id) != "completed":
            assert time.monotonic() < deadline, "event not completed"
            await asyncio.sleep(0.5)
        while True:
            cur = await conn.execute(
                "SELECT baseline_used, baseline_note, restored_at FROM dr_event_runtime WHERE event_id = %s",
                (event_id,),
            )
            runtime = await cur.fetchone()
            if runtime is not None and runtime[2] is not None:
                break
            assert time.monotonic() < deadline, "event not restored"
            await asyncio.sleep(0.5)
        cur = await conn.execute(
            "SELECT floor(extract(epoch FROM ts - %s) / 900)::int, avg(target_kw), avg(delivered_kw),"
            " count(*) FROM dr_measurements WHERE event_id = %s GROUP BY 1 ORDER BY 1",
            (starts_at, event_id),
        )
        intervals = await cur.fetchall()
        independent = await interval_response_from_telemetry(conn, clock, event_id, starts_at, 4)
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'accepted'),"
            " count(*) FILTER (WHERE status IN ('rejected', 'failed', 'expired'))"
            " FROM dr_dispatches WHERE event_id = %s",
            (event_id,),
        )
        dispatch_counts = await cur.fetchone()
        # The restore commands are answered within a poll or two of the gateway.
        await _until(lambda: not _limited(county), 15.0)
    print(f"\nintervals (slot, target kW, delivered kW, cycles): {intervals}")
    print(f"delivered from raw telemetry per interval: {[round(x) for x in independent]}")
    print(f"dispatches (all, accepted, refused): {dispatch_counts}; runtime: {runtime}")

    assert runtime[0] == "meter_before" and "not computable" in runtime[1], runtime
    assert [row[0] for row in intervals] == [0, 1, 2, 3], intervals
    for slot, target, delivered, _ in intervals[1:]:
        assert delivered >= 0.95 * target, f"interval {slot}: {delivered:.0f} of {target:.0f} kW"
    for slot, delivered in enumerate(independent[1:], start=1):
        assert delivered >= 0.95 * 18_000, f"interval {slot} from telemetry: {delivered:.0f} kW"
    tier0 = [(site, dev) for site, dev, _ in county.commands if county.tiers.get(dev) == 0]
    assert not tier0, f"commands to tier-0 devices: {tier0[:5]}"
    assert county.commands, "the spy saw no command at all"
    for key, tier in county.tiers.items():
        dev: Any = county.fleet.devices.get(key)
        if tier == 0 and dev is not None and dev.kind == "load":
            assert dev.physics.setpoint_w == 0 and dev.physics.curtailment_w == 0, key
    assert not _limited(county), f"left limited after the event: {_limited(county)}"


async def _leader(conn: psycopg.AsyncConnection) -> str | None:
    cur = await conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'lishui-dr-%%-lock'"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0]).removeprefix("lishui-dr-").removesuffix("-lock")


async def _kill(conn: psycopg.AsyncConnection, name: str, task: asyncio.Task[None]) -> None:
    """As a crash looks from outside: the controller's connections die and it acts no more."""
    task.cancel()
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
        (f"lishui-dr-{name}-%",),
    )
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task


async def test_standby_takes_over_and_holds_expire_when_every_controller_dies(
    county: County, db_dsn: str
) -> None:
    settings, clock = county.settings, county.clock
    starts_at = next_boundary(clock.now(), timedelta(minutes=2))
    event_id = await _create_event(db_dsn, starts_at, 30, 12_000.0)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        first = asyncio.create_task(
            run_dr_controller(settings, name="alpha", clock=clock, tuning=LoopTuning(max_age_s=15.0))
        )
        for _ in range(100):
            if await _leader(conn) == "alpha":
                break
            await asyncio.sleep(0.2)
        second = asyncio.create_task(
            run_dr_controller(settings, name="beta", clock=clock, tuning=LoopTuning(max_age_s=15.0))
        )
        try:
            await sim_sleep_until(clock, starts_at + timedelta(minutes=8))
            cur = await conn.execute(
                "SELECT count(*) FROM dr_dispatches WHERE event_id = %s AND controller = 'alpha'", (event_id,)
            )
            assert (await cur.fetchone()) != (0,), "alpha never dispatched"
            killed = time.monotonic()
            await _kill(conn, "alpha", first)
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM dr_measurements WHERE event_id = %s AND controller = 'beta'",
                    (event_id,),
                )
                if (await cur.fetchone()) != (0,):
                    break
                assert time.monotonic() - killed < 30, "the standby did not take over within 30 s"
                await asyncio.sleep(0.2)
            takeover_s = time.monotonic() - killed
            print(f"\nstandby took over {takeover_s:.1f} s after the leader died")
            await asyncio.sleep(4)  # beta leads a few cycles
            assert _limited(county), "mid-event, with beta leading, devices should be dispatched"
            killed = time.monotonic()
            await _kill(conn, "beta", second)
            # Nobody restores now: the gateway's holds must, within hold_s of the last renewal.
            while _limited(county):
                assert time.monotonic() - killed < HOLD_S + 5, f"still limited: {_limited(county)}"
                await asyncio.sleep(0.5)
            print(f"every device back to default {time.monotonic() - killed:.1f} s after the last controller")
            cur = await conn.execute(
                "SELECT controller, status, count(*), min(detail) FROM dr_dispatches WHERE event_id = %s"
                " GROUP BY 1, 2 ORDER BY 1, 2",
                (event_id,),
            )
            print(f"dispatches by controller and status: {await cur.fetchall()}")
            assert takeover_s < 30
        finally:
            for task in (first, second):
                task.cancel()
            await conn.execute(
                "UPDATE dr_events SET state = 'cancelled', reason = 'test over' WHERE id = %s"
                " AND state IN ('scheduled', 'active')",
                (event_id,),
            )
