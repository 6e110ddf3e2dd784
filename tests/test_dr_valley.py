"""Valley filling (填谷) end to end on a small fleet: simulators → gateway → Mosquitto → ingest →
TimescaleDB → controller → load-raise setpoints, storage charging and hydro held back → simulators.

At night (02:xx local, the two-shift loads at their base) a 45-minute event asks 700 kW more load.
The fleet offers 150 kW of hydro held back and 200 kW of battery charging (tier-free, used first),
150 kW of raise at a tier-5 site, 480 kW at a tier-3 site, and a tier-0 water works that must never be
touched. As in tests/test_dr_scenario.py the simulators' clock runs 60 times faster than the wall and
is the controller's event clock; the fresh test database has no history, so the program baseline
falls back to meter-before (the test checks the reason is recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from dr_harness import (
    INTERVAL,
    Commands,
    event_row,
    fast_loop_settings,
    interval_response_from_telemetry,
    limited,
    next_boundary,
    record_commands,
    sim_sleep_until,
    wait_live,
    wall_of,
)

from core.dr.fleet import DeviceInfo, build_resources
from core.dr.resources import Direction
from core.settings import Settings
from dr_controller import store
from dr_controller.controller import Controller, EventRun, LoopTuning, Sent, spec_of
from dr_controller.measure import measure
from dr_controller.service import run_dr_controller
from gateway.service import run_gateway
from ingest.service import run_ingest
from lishui.composition import gateway_config, seed_dr_attributes, seed_registry
from simulators.clock import SimClock
from simulators.fleet import Fleet, serve_fleet
from simulators.scenario import Scenario

FACTOR = 60.0
START = datetime.fromisoformat("2026-07-15T02:02:00+08:00")  # a Wednesday night: flat base loads
TARGET_KW = 700.0
EVENT_MIN = 45
HOLD_S = 10.0
TAG = uuid.uuid4().hex[:6]


def _scenario() -> Scenario:
    def load(key: str, site: str, rated: float, shape: str) -> dict[str, Any]:
        return {
            "key": key,
            "site": site,
            "kind": "load",
            "profile": "lixian-flexload-v1",
            "rated_power_w": rated,
            "sim": {"shape": shape, "noise": 0.01},
        }

    return Scenario.model_validate(
        {
            "name": f"valley-{TAG}",
            "tenants": [{"key": f"vf-co-{TAG}", "name": "valley test", "kind": "park"}],
            "sites": [
                {"key": f"vf-park3-{TAG}", "name": "tier 3 park", "town": "xiaodukou", "tier": 3},
                {"key": f"vf-park5-{TAG}", "name": "tier 5 works", "town": "xiaodukou", "tier": 5},
                {"key": f"vf-water-{TAG}", "name": "water works", "town": "xiaodukou", "tier": 0},
                {"key": f"vf-hydro-{TAG}", "name": "hydro", "town": "wangjiachang", "kind": "hydro"},
            ],
            "devices": [
                # Night base 30 % of rated; raisable 30 % of rated (the simulators' default).
                load(f"vf-load-a-{TAG}", f"vf-park3-{TAG}", 1_000_000, "two_shift"),
                load(f"vf-load-b-{TAG}", f"vf-park3-{TAG}", 600_000, "two_shift"),
                load(f"vf-load-c-{TAG}", f"vf-park5-{TAG}", 500_000, "one_shift"),
                load(f"vf-load-w-{TAG}", f"vf-water-{TAG}", 400_000, "two_shift"),
                {
                    "key": f"vf-bess-{TAG}",
                    "site": f"vf-park3-{TAG}",
                    "kind": "battery",
                    "profile": "sunspec-battery",
                    "rated_power_w": 200_000,
                    "sim": {"capacity_wh": 400_000, "initial_soc_pct": 50},
                },
                {
                    "key": f"vf-hydro-1-{TAG}",
                    "site": f"vf-hydro-{TAG}",
                    "kind": "hydro",
                    "profile": "lixian-hydro-v1",
                    "rated_power_w": 400_000,
                    "sim": {"typical_output_w": 150_000, "reservoir_area_m2": 60_000},
                },
            ],
        }
    )


@dataclass
class Park:
    settings: Settings
    fleet: Fleet
    scenario: Scenario
    clock: SimClock
    site_ids: list[int]
    hydro_initial_w: dict[str, float]
    commands: Commands = field(default_factory=list)

    def keys(self) -> list[str]:
        return [d.key for d in self.scenario.devices]

    def tier_of_site(self, site: str) -> int | None:
        return next((s.tier for s in self.scenario.sites if s.key == site), None)


async def _seed(settings: Settings, scenario: Scenario) -> list[int]:
    await seed_registry(settings, scenario)
    await seed_dr_attributes(settings, scenario)
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id FROM sites WHERE key = ANY(%s) ORDER BY id", ([s.key for s in scenario.sites],)
        )
        return [int(r[0]) for r in await cur.fetchall()]


@pytest.fixture(scope="module")
async def park(settings: Settings) -> AsyncIterator[Park]:
    scenario = _scenario()
    site_ids = await _seed(settings, scenario)
    vf_settings = fast_loop_settings(settings, f"vf-{TAG}", hold_s=HOLD_S)
    clock = SimClock(factor=FACTOR, start=START)
    async with serve_fleet(scenario, base_port=0, clock=clock) as fleet:
        hydro = {k: d.physics.setpoint_w for k, d in fleet.devices.items() if d.kind == "hydro"}  # type: ignore[attr-defined]
        park = Park(vf_settings, fleet, scenario, clock, site_ids, hydro)
        config = gateway_config(scenario, fleet.endpoints, name=f"vf-gw-{TAG}")
        async with asyncio.TaskGroup() as tg:
            services = [
                tg.create_task(run_ingest(vf_settings), name="ingest"),
                tg.create_task(run_gateway(vf_settings, config), name="gateway"),
                tg.create_task(record_commands(vf_settings, park.commands), name="spy"),
            ]
            try:
                await wait_live(settings.db.dsn, park.keys())
                yield park
            finally:
                for task in services:
                    task.cancel()


def _limited(park: Park) -> dict[str, str]:
    """Simulated devices still under a command of ours."""
    return limited(park.fleet, park.keys(), park.hydro_initial_w)


async def _wait(conn: psycopg.AsyncConnection, sql: str, args: tuple[Any, ...], within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        cur = await conn.execute(sql, args)
        row = await cur.fetchone()
        if row is not None and row[-1]:
            return row
        assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.5)


async def test_valley_event_raises_load_by_the_target_spares_tier0_and_restores(
    park: Park, settings: Settings
) -> None:
    clock = park.clock
    starts_at = next_boundary(clock.now(), timedelta(minutes=5))
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope, site_ids)"
            " VALUES ('valley_filling', %s, %s, %s, 'intraday', 'sites', %s) RETURNING id",
            (TARGET_KW, starts_at, starts_at + timedelta(minutes=EVENT_MIN), park.site_ids),
        )
        row = await cur.fetchone()
        assert row is not None
        event_id = int(row[0])
        controller = asyncio.create_task(
            run_dr_controller(park.settings, name=f"vf-{TAG}", clock=clock, tuning=LoopTuning(max_age_s=15.0))
        )
        try:
            await sim_sleep_until(clock, starts_at + INTERVAL)
            assert _limited(park), "mid-event, devices should be under command"
            await sim_sleep_until(clock, starts_at + timedelta(minutes=EVENT_MIN))
            runtime = await _wait(
                conn,
                "SELECT baseline_used, baseline_note, restored_at FROM dr_event_runtime WHERE event_id = %s",
                (event_id,),
                30.0,
            )
        finally:
            controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller
        cur = await conn.execute(
            "SELECT floor(extract(epoch FROM ts - %s) / 900)::int, avg(target_kw), avg(delivered_kw),"
            " count(*) FROM dr_measurements WHERE event_id = %s GROUP BY 1 ORDER BY 1",
            (starts_at, event_id),
        )
        intervals = await cur.fetchall()
        independent = await interval_response_from_telemetry(
            conn, clock, event_id, starts_at, 3, raising=True
        )
        cur = await conn.execute(
            "SELECT resource_id, op, count(*), count(*) FILTER (WHERE status = 'accepted'),"
            " max(dispatch_kw) FROM dr_dispatches WHERE event_id = %s AND NOT restore GROUP BY 1, 2",
            (event_id,),
        )
        dispatches = {(r[0], r[1]): r[2:] for r in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status <> 'accepted') FROM dr_dispatches WHERE event_id = %s"
            " AND status <> 'sent'",
            (event_id,),
        )
        refused = await cur.fetchone()
        cur = await conn.execute("SELECT state FROM dr_events WHERE id = %s", (event_id,))
        state = await cur.fetchone()
        # The loads report their raise and their limit (registers 15-16 and 13-14 through the gateway):
        # the controller judged and bounded the raises by these.
        cur = await conn.execute(
            "SELECT m.name, max(t.value) FROM telemetry t JOIN devices d ON d.id = t.device_id"
            " JOIN metrics m ON m.id = t.metric_id WHERE d.key = %s"
            " AND m.name IN ('load_raise_w', 'max_raisable_w') AND t.ts >= %s GROUP BY 1",
            (f"vf-load-c-{TAG}", wall_of(clock, starts_at)),
        )
        reported = dict(await cur.fetchall())
    restored = await _restored(park)
    print(f"\nintervals (slot, target kW, delivered kW, cycles): {intervals}")
    print(f"raise from raw telemetry per interval: {[round(x) for x in independent]}")
    print(f"dispatches (resource, op) -> (sent, accepted, max kW): {dispatches}")

    assert state == ("completed",)
    assert runtime[0] == "meter_before" and "not computable" in runtime[1], runtime
    assert [r[0] for r in intervals] == [0, 1, 2], intervals
    for slot, target, delivered, _ in intervals[1:]:
        assert target == TARGET_KW and delivered >= 0.95 * target, f"interval {slot}: {delivered:.0f} kW"
    for slot, raised in enumerate(independent[1:], start=1):
        assert raised >= 0.95 * TARGET_KW, f"interval {slot} from telemetry: {raised:.0f} kW"
    assert refused == (0,), "every command accepted by the gateway"
    # Every lever in use: hydro held back, the battery charging, loads raised (tier 5 and tier 3).
    ops = {op for _, op in dispatches}
    assert {"set_output_setpoint", "set_battery_power", "set_load_raise"} <= ops, ops
    raised_loads = {rid for (rid, op), v in dispatches.items() if op == "set_load_raise" and v[2] > 0}
    assert f"vf-load-c-{TAG}" in raised_loads and raised_loads & {f"vf-load-a-{TAG}", f"vf-load-b-{TAG}"}
    assert reported["max_raisable_w"] == 150_000  # 30 % of rated, the simulator's default
    assert reported["load_raise_w"] >= 0.95 * dispatches[(f"vf-load-c-{TAG}", "set_load_raise")][2] * 1000
    tier0 = [(s, d) for s, d, _ in park.commands if park.tier_of_site(s) == 0]
    assert not tier0, f"commands to tier-0 devices: {tier0}"
    water: Any = park.fleet.device(f"vf-load-w-{TAG}")
    assert water.physics.raise_setpoint_w == 0 and water.physics.setpoint_w == 0
    assert restored, f"left under command after the event: {_limited(park)}"


async def _restored(park: Park, within: float = 15.0) -> bool:
    """The restore commands are answered within a poll or two of the gateway."""
    deadline = time.monotonic() + within
    while _limited(park):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


def test_raised_loads_are_judged_by_the_raise_they_report_not_their_drifting_reference() -> None:
    """Mid-event, three loads were each dispatched a 100 kW raise while their production profiles fell
    by 80 kW: one reports the full raise (delivering: never bounded), one reports 40 kW (the device's
    ceiling: bounded at what it gives, so the shortfall goes elsewhere), and one reports no raise at
    all (judged by measurement against its reference: 20 kW up, bounded)."""
    start = datetime(2026, 7, 15, 2, 0, tzinfo=UTC)
    row = event_row("valley_filling", 300.0, start)
    devices = {
        key: DeviceInfo(i, key, "park", 1, "load", "lixian-flexload-v1", 1e6, 4, None, {})
        for i, key in enumerate(("full", "short", "silent"), start=1)
    }
    refs = {key: store.Reference(key, d.id, "flexible_load", False, 500.0) for key, d in devices.items()}
    run = EventRun(store.EventRecord(row), spec_of(row), devices, refs, None)
    run.sent = {key: Sent(100.0, 0.0) for key in devices}
    live = {
        devices["full"].id: {"active_power_w": 520_000.0, "load_raise_w": 100_000.0},
        devices["short"].id: {"active_power_w": 460_000.0, "load_raise_w": 40_000.0},
        devices["silent"].id: {"active_power_w": 520_000.0},
    }
    snap = build_resources(devices.values(), live, {"silent": 500.0})
    m = measure(
        Direction.RAISE,
        {k: (False, r.reference_kw) for k, r in refs.items()},
        {k: snap.measured_kw(k) for k in devices},
    )
    ctl = Controller.__new__(Controller)
    ctl.tuning = LoopTuning(ramp_in_min=5, cap_min=10)
    now = start + timedelta(minutes=20)
    ctl._cap_underdelivery(run, snap, now, m)
    assert set(run.caps) == {"short", "silent"}, run.caps
    assert run.caps["short"] == (pytest.approx(40.0), now + timedelta(minutes=10))
    assert run.caps["silent"][0] == pytest.approx(20.0)
