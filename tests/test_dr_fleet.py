"""Resource models from registry rows and live values, the delivered-response measurement, the loop's
integrator, and the meter's queries on the test database. Fast: no simulators, no broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from dr_harness import event_row

from core import registry
from core.dr.fleet import (
    DeviceInfo,
    ScopeFilter,
    build_resources,
    load_devices,
    read_latest,
    restore_command,
)
from core.dr.resources import Direction, FlexibleLoad, HydroUnit, StorageUnit, Window
from dr_controller.controller import Controller, EventRun, LoopTuning, spec_of
from dr_controller.measure import measure
from dr_controller.store import EventRecord


def device(key: str, kind: str, tier: int = 3, rated: float = 1e6, **attrs: Any) -> DeviceInfo:
    profile = {"hydro": "lixian-hydro-v1", "load": "lixian-flexload-v1"}.get(kind)
    return DeviceInfo(
        abs(hash(key)) % 10**6, key, f"site-{key}", 1, kind, profile, rated, tier, "lidan", attrs
    )


def test_models_follow_registry_attributes_and_live_values() -> None:
    hydro, load = device("h", "hydro", reservoir_area_m2=100_000), device("l", "load", floor_w=200_000)
    bess, meter = device("b", "battery", rated=500_000), device("m", "meter")
    protected, stale = device("p", "load", tier=0), device("s", "load")
    live = {
        hydro.id: {"active_power_w": 400_000, "reservoir_level_m": 3.0, "inflow_m3s": 1.0},
        load.id: {"active_power_w": 700_000, "curtailment_w": 100_000},
        bess.id: {"active_power_w": -100_000, "soc_pct": 60, "energy_capacity_wh": 1e6},
        meter.id: {"active_power_w": 5e6},
        protected.id: {"active_power_w": 900_000},
    }
    snap = build_resources([hydro, load, bess, meter, protected, stale], live, references={"h": 350.0})
    assert set(snap.resources) == {"h", "l", "b"}
    assert snap.excluded == {"m": "not controllable", "p": "tier 0 (protected)", "s": "stale"}
    h = snap.resources["h"]
    assert isinstance(h, HydroUnit) and h.output_kw == 350  # pinned at the activation reference
    assert h.reservoir_kwh == pytest.approx(2.0 * 100_000 * 9.81 * 38 * 0.86 / 3600, rel=1e-9)
    ld = snap.resources["l"]
    assert isinstance(ld, FlexibleLoad) and ld.load_kw == 800 and ld.floor_kw == 200  # measured + held back
    assert ld.curtailable_kw(Window(60)) == 400  # 40 % of rated, the simulators' default
    b = snap.resources["b"]
    assert isinstance(b, StorageUnit) and b.power_kw == -100 and b.capacity_kwh == 1000
    assert snap.measured_kw("b") == -100


def test_flexible_load_raise_defaults_and_pinned_reference() -> None:
    flex = device("l", "load")
    other = DeviceInfo(7, "o", "site-o", 1, "load", "acme-load", 1e6, 3, None, {"curtailable": True})
    live = {d.id: {"active_power_w": 500_000.0} for d in (flex, other)}
    snap = build_resources([flex, other], live, references={"l": 900.0})
    ld = snap.resources["l"]
    assert isinstance(ld, FlexibleLoad) and ld.load_kw == 900  # pinned: a raise is not reported
    assert ld.raisable_kw == 300 and ld.max_load_kw == 1000  # the simulators' defaults
    assert ld.flexibility(Direction.RAISE, Window(60)).available_kw == 100  # below the ceiling
    assert snap.resources["o"].flexibility(Direction.RAISE, Window(60)).available_kw == 0  # no raise op


def test_restore_commands_are_the_profiles_defaults() -> None:
    cmds = {d.kind: restore_command(d, d.key, 30.0) for d in (device("h", "hydro"), device("l", "load"))}
    assert cmds["hydro"] is not None and cmds["hydro"].command.args == {"watts": 1e6}
    assert cmds["load"] is not None and cmds["load"].command.args == {"watts": 0.0}
    assert restore_command(device("m", "meter"), "m", 30.0) is None
    raised = restore_command(device("l", "load"), "l", 30.0, Direction.RAISE)
    assert raised is not None and raised.command.op == "set_load_raise"
    assert raised.command.args == {"watts": 0.0}


def test_measurement_signs_and_program_baseline() -> None:
    refs = {"load": (False, 1000.0), "hydro": (True, 400.0), "bess": (True, -100.0), "gone": (False, 50.0)}
    m = measure(Direction.REDUCE, refs, {"load": 700.0, "hydro": 900.0, "bess": 200.0})
    assert m.delivered_kw == pytest.approx(300 + 500 + 300)  # a load without a reading delivers nothing
    assert m.net_baseline_kw == pytest.approx(1050 - 300)
    with_program = measure(Direction.REDUCE, refs, {"load": 700.0, "hydro": 400.0, "bess": -100.0}, 1200.0)
    assert with_program.delivered_kw == pytest.approx(1200 - 750)
    assert measure(Direction.RAISE, refs, {"load": 1100.0}).delivered_kw == pytest.approx(100)


def test_integrator_holds_during_ramp_in_then_corrects_with_gain_below_one() -> None:
    start = datetime(2026, 7, 15, 1, 30, tzinfo=UTC)
    row = event_row("peak_shaving", 1000.0, start)
    run = EventRun(EventRecord(row), spec_of(row), {}, {}, None, allocated_kw=1000.0)
    ctl = Controller.__new__(Controller)
    ctl.tuning = LoopTuning(gain=0.5, ramp_in_min=5)
    m = measure(Direction.REDUCE, {"x": (True, 0.0)}, {"x": 800.0})
    assert ctl._integrate(run, start + timedelta(minutes=2), 1000.0, m) == 1000.0
    assert ctl._integrate(run, start + timedelta(minutes=6), 1000.0, m) == pytest.approx(1100.0)
    run.allocated_kw = 1450.0
    assert ctl._integrate(run, start + timedelta(minutes=6), 1000.0, m) == 1500.0  # anti-windup clamp


async def test_meter_queries_scope_and_freshness(conn: psycopg.AsyncConnection) -> None:
    tag = uuid.uuid4().hex[:6]
    await registry.upsert_site(conn, f"fl-a-{tag}", "a", town_key="lipu", feeder=f"f-{tag}")
    await registry.upsert_site(conn, f"fl-b-{tag}", "b", town_key="lipu")
    a = await registry.upsert_device(
        conn, f"fl-la-{tag}", f"fl-a-{tag}", "load", profile="lixian-flexload-v1"
    )
    b = await registry.upsert_device(
        conn, f"fl-lb-{tag}", f"fl-b-{tag}", "load", profile="lixian-flexload-v1"
    )
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO telemetry (ts, device_id, metric_id, value) VALUES (%s, %s, 1, 10), (%s, %s, 1, 20),"
        " (%s, %s, 29, 5), (%s, %s, 1, 30)",
        (now - timedelta(seconds=5), a, now, a, now, a, now - timedelta(minutes=5), b),
    )
    on_feeder = await load_devices(conn, ScopeFilter(feeder=f"f-{tag}"))
    assert [d.key for d in on_feeder] == [f"fl-la-{tag}"]
    live = await read_latest(conn, [a, b], max_age_s=60)
    assert live == {a: {"active_power_w": 20.0, "curtailment_w": 5.0}}
