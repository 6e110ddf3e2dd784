"""OpenADR 2.0b: the mapping of VTN events onto Lishui's event model (fast, pure), and the VEN against a
real openleadr VTN (``OpenADRServer`` on a free localhost port) driving the simulated Xiaodukou park.

The park (the ``default`` scenario: three flexible loads, a battery, a small hydro unit) runs through
the real gateway, Mosquitto and ingest into the test database, with the real controller; the
simulators' clock runs 60 times faster than the wall and the VTN's events are placed on it, so an event
minute passes in a wall second. openleadr's VTN has no EiOpt service (0.5.36), so the test VTN mounts a
small one that records the oadrCreateOpt messages carrying the reasons of Lishui's opt-outs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import pytest
from dr_harness import fast_loop_settings, flex_site, until, wait_live, write_history
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from openleadr import OpenADRServer, hooks, utils
from openleadr.service import OptService, handler
from psycopg.rows import dict_row

from core.dr.baselines import SLOTS_PER_DAY
from core.dr.events import EventKind, EventScope, EventSpec, Notice
from core.dr.fleet import build_resources
from core.dr.forecast import PLAIN_WEEK
from core.dr.forecast_capacity import day_ahead_register
from core.settings import OpenAdrSettings, Settings
from dr_controller.controller import LoopTuning
from dr_controller.openadr import run_ven
from dr_controller.openadr_capacity import DAY_AHEAD, NOW, Capacity, capacity_for
from dr_controller.openadr_mapping import (
    GRID,
    MUST_RUN,
    Ask,
    Refusal,
    Selector,
    plan,
    required_kw,
    selector,
    to_specs,
)
from dr_controller.service import run_dr_controller
from gateway.service import run_gateway
from ingest.service import run_ingest
from lishui.composition import gateway_config, seed_dr_attributes, seed_registry
from simulators.clock import SimClock
from simulators.fleet import serve_fleet
from simulators.scenario import load_scenario

T0 = datetime(2027, 7, 14, 1, 0, tzinfo=UTC)  # a Wednesday, 09:00 in Lixian
LEVELS = (300.0, 600.0, 900.0)
SHANGHAI = ZoneInfo("Asia/Shanghai")


def event(
    name: str = "LOAD_DISPATCH",
    kind: str = "delta",
    payloads: list[Any] | None = None,
    *,
    start: datetime = T0,
    minutes: float | list[float] = 15,
    measurement: dict[str, Any] | None = None,
    targets: list[dict[str, Any]] | None = None,
    extra_signals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An event as openleadr's client hands it to on_event."""
    payloads = payloads if payloads is not None else [-500.0]
    lengths = minutes if isinstance(minutes, list) else [minutes] * len(payloads)
    intervals, t = [], start
    for uid, (payload, length) in enumerate(zip(payloads, lengths, strict=True)):
        intervals.append(
            {"dtstart": t, "duration": timedelta(minutes=length), "signal_payload": payload, "uid": uid}
        )
        t += timedelta(minutes=length)
    signal: dict[str, Any] = {
        "signal_name": name,
        "signal_type": kind,
        "intervals": intervals,
        "signal_id": "s",
    }
    if measurement:
        signal["measurement"] = measurement
    return {
        "event_descriptor": {"event_id": "e1", "modification_number": 0, "event_status": "far"},
        "active_period": {"dtstart": start, "duration": t - start},
        "event_signals": [*(extra_signals or []), signal],
        "targets": targets or [{"ven_id": "ven-1"}],
        "response_required": "always",
    }


def parts_of(ev: dict[str, Any], net_load_kw: float = 1000.0) -> list[tuple[int, int, Ask]]:
    """(start minute, end minute, ask) relative to T0."""
    return [
        (int((p.starts_at - T0) / timedelta(minutes=1)), int((p.ends_at - T0) / timedelta(minutes=1)), p.ask)
        for p in plan(ev, levels_kw=LEVELS, net_load_kw=net_load_kw)
    ]


# -- mapping: signals --------------------------------------------------------------------------------


def test_load_dispatch_delta_and_setpoint_become_targets_caps_and_floors() -> None:
    shave, fill = EventKind.PEAK_SHAVING, EventKind.VALLEY_FILLING
    assert parts_of(event(payloads=[-500.0])) == [(0, 15, Ask(shave, target_kw=500.0))]
    assert parts_of(event(payloads=[250.0])) == [(0, 15, Ask(fill, target_kw=250.0))]
    megawatts = event(payloads=[-2.5], measurement={"name": "powerReal", "unit": "W", "scale": "M"})
    assert parts_of(megawatts)[0][2].target_kw == 2500.0
    watts = event(payloads=[-500_000], measurement={"name": "powerReal", "unit": "W", "scale": "none"})
    assert parts_of(watts)[0][2].target_kw == 500.0
    assert parts_of(event(kind="setpoint", payloads=[800.0]), 1000.0) == [(0, 15, Ask(shave, cap_kw=800.0))]
    assert parts_of(event(kind="setpoint", payloads=[1200.0]), 1000.0) == [
        (0, 15, Ask(fill, floor_kw=1200.0))
    ]
    assert parts_of(event(kind="setpoint", payloads=[1000.0]), 1000.0) == []  # already there
    assert required_kw(Ask(shave, cap_kw=800.0), 1000.0) == 200.0
    assert required_kw(Ask(fill, floor_kw=1200.0), 1500.0) == 0.0
    percent = event("LOAD_CONTROL", "x-loadControlPercentOffset", [-10.0])
    assert parts_of(percent, 3000.0) == [(0, 15, Ask(shave, target_kw=pytest.approx(300.0)))]


def test_simple_levels_use_the_programs_table_and_level_0_asks_nothing() -> None:
    ev = event("SIMPLE", "level", [0, 1, 3, 3, 0], minutes=15)
    shave = EventKind.PEAK_SHAVING
    assert parts_of(ev) == [(15, 30, Ask(shave, target_kw=300.0)), (30, 60, Ask(shave, target_kw=900.0))]
    assert parts_of(event("SIMPLE", "level", [0, 0])) == []


@pytest.mark.parametrize(
    ("ev", "says"),
    [
        (event("ELECTRICITY_PRICE", "price", [0.9]), "no supported signal"),
        (event("LOAD_DISPATCH", "multiplier", [0.9]), "no supported signal"),
        (event("SIMPLE", "level", [4]), "outside 0..3"),
        (event(payloads=[float("nan")]), "not a finite number"),
        (event(payloads=["lots"]), "not a finite number"),
        (event(kind="setpoint", payloads=[-5.0]), "negative"),
        (
            event(payloads=[-1.0], measurement={"name": "energyReal", "unit": "Wh", "scale": "k"}),
            "not a power",
        ),
        (event(payloads=[-1.0], minutes=0), "open-ended"),
        (event(payloads=[-1.0] * 2, minutes=[13 * 60, 12 * 60]), "longer than 24 h"),
        (event("LOAD_CONTROL", "x-loadControlPercentOffset", [-150.0]), "outside -100..100"),
    ],
)
def test_what_lishui_cannot_serve_is_refused_with_the_reason(ev: dict[str, Any], says: str) -> None:
    with pytest.raises(Refusal, match=says):
        plan(ev, levels_kw=LEVELS, net_load_kw=1000.0)


def test_a_supported_signal_is_used_beside_an_informational_one() -> None:
    price = {"signal_name": "ELECTRICITY_PRICE", "signal_type": "price", "intervals": []}
    assert parts_of(event(payloads=[-100.0], extra_signals=[price]))[0][2].target_kw == 100.0


# -- mapping: windows --------------------------------------------------------------------------------


def test_windows_are_widened_to_the_grid_and_equal_intervals_merge() -> None:
    shave = Ask(EventKind.PEAK_SHAVING, target_kw=500.0)
    # 09:07 for 2 x 30 min: one part, 09:00-10:15 (outer edges outward).
    assert parts_of(event(payloads=[-500.0, -500.0], start=T0 + timedelta(minutes=7), minutes=30)) == [
        (0, 75, shave)
    ]
    # Two levels meeting at 09:37: the inner boundary goes to the nearest grid point (09:30).
    two = parts_of(event(payloads=[-500.0, -800.0], start=T0 + timedelta(minutes=7), minutes=30))
    assert [(a, b) for a, b, _ in two] == [(0, 30), (30, 75)]


def intervals_strategy() -> st.SearchStrategy[list[tuple[int, int, float]]]:
    """(gap before, length, payload) in minutes and kW."""
    return st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 120), st.sampled_from([0.0, -100.0, -250.0, 300.0])),
        min_size=1,
        max_size=8,
    )


@hsettings(max_examples=200, deadline=None)
@given(spans=intervals_strategy(), offset=st.integers(0, 14))
def test_parts_are_on_the_grid_never_overlap_and_cover_what_is_asked(
    spans: list[tuple[int, int, float]], offset: int
) -> None:
    intervals, t = [], T0 + timedelta(minutes=offset)
    for uid, (gap, length, payload) in enumerate(spans):
        t += timedelta(minutes=gap if uid else 0)
        intervals.append(
            {"dtstart": t, "duration": timedelta(minutes=length), "signal_payload": payload, "uid": uid}
        )
        t += timedelta(minutes=length)
    ev = event()
    ev["event_signals"][0]["intervals"] = intervals
    first, last = intervals[0]["dtstart"], t
    parts = plan(ev, levels_kw=LEVELS, net_load_kw=1000.0)
    for p in parts:
        assert p.starts_at < p.ends_at
        assert all(x.timestamp() % GRID.total_seconds() == 0 for x in (p.starts_at, p.ends_at))
        assert first - GRID < p.starts_at and p.ends_at < last + GRID
    for a, b in pairwise(parts):
        assert a.ends_at <= b.starts_at
        assert not (a.ends_at == b.starts_at and a.ask == b.ask), "equal neighbours are merged"
    asked = {payload for _, _, payload in spans if payload}
    assert {
        -(p.ask.target_kw or 0) if p.ask.kind is EventKind.PEAK_SHAVING else p.ask.target_kw for p in parts
    } <= asked


# -- mapping: targets and specs ----------------------------------------------------------------------


def test_targets_name_sites_or_one_town_or_feeder() -> None:
    assert selector([{"ven_id": "ven-1"}]) == Selector()
    assert selector([{"resource_id": "b"}, {"resource_id": "a"}, {"ven_id": "v"}]) == Selector(("a", "b"))
    assert selector([{"group_id": "lipu"}]) == Selector(group="lipu")
    for bad, says in (
        ([{"resource_id": "a"}, {"group_id": "lipu"}], "mix"),
        ([{"group_id": "lipu"}, {"group_id": "lidan"}], "2 groups"),
        ([{"party_id": "p"}], "not supported"),
    ):
        with pytest.raises(Refusal, match=says):
            selector(bad)


def test_specs_carry_scope_notice_and_stable_part_numbers() -> None:
    parts = plan(event("SIMPLE", "level", [1, 2, 3], minutes=60), levels_kw=LEVELS, net_load_kw=0.0)
    scope = {"scope": EventScope.SITES, "site_ids": [3, 4]}
    day_before = T0 - timedelta(hours=12)  # 21:00 local the evening before
    specs = to_specs(parts, scope, now=day_before, tz=SHANGHAI, baseline="meter_before_15min")
    assert list(specs) == [0, 1, 2] and specs[0].notice is Notice.DAY_AHEAD and specs[2].site_ids == [3, 4]
    later = to_specs(parts, scope, now=T0 + timedelta(minutes=90), tz=SHANGHAI, baseline="meter_before_15min")
    assert list(later) == [1, 2] and later[1].notice is Notice.INTRADAY and later[2].target_kw == 900.0


# -- capacity: now, or by the day-ahead register ------------------------------------------------------

CAPACITY_DAY = date(2029, 3, 14)  # a Wednesday: no other test has history or forecasts near it


async def test_a_later_days_county_event_is_judged_by_the_day_ahead_register_once_forecast(
    conn: psycopg.AsyncConnection,
) -> None:
    """A flexible load with a week of history at 600 kW and no live reading: invisible to the capacity
    now, counted by the day-ahead register (600 forecast - 300 floor) once the day has forecasts."""
    site = f"oadr-cap-{uuid.uuid4().hex[:6]}"
    load = await flex_site(conn, site)
    for back in range(1, 8):
        await write_history(conn, load, CAPACITY_DAY - timedelta(days=back), np.full(SLOTS_PER_DAY, 600.0))
    starts_at = datetime.combine(CAPACITY_DAY, datetime.min.time(), SHANGHAI) + timedelta(hours=17)
    spec = EventSpec(
        kind=EventKind.PEAK_SHAVING,
        target_kw=100.0,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(hours=1),
        notice=Notice.DAY_AHEAD,
    )
    evening_before = starts_at - timedelta(hours=20)

    async def judged(now: datetime, part: EventSpec = spec) -> Capacity:
        return await capacity_for(
            conn, build_resources([], {}), part, now, calendar=PLAIN_WEEK, max_age_s=15.0
        )

    assert (await judged(evening_before)).basis == NOW, "no forecasts for the day yet"
    await conn.execute(  # the county's load forecast of the day, as the leader's daily run leaves it
        "INSERT INTO forecasts (issued_at, target_day, kind, method, kw)"
        " VALUES (now(), %s, 'load', 'test', %s)",
        (CAPACITY_DAY, [600.0] * SLOTS_PER_DAY),
    )
    day_ahead = await judged(evening_before)
    register = (await day_ahead_register(conn, CAPACITY_DAY, 17 * 4, 4)).register
    assert day_ahead.basis == DAY_AHEAD and day_ahead.kw == pytest.approx(register.total_kw)
    assert f"{site}-load" not in register.excluded
    assert register.towns["jinluo"]["flexible_load"] >= 300 - 1e-6
    assert (await judged(starts_at - timedelta(hours=1))).basis == NOW, "on the day itself: now"
    late = starts_at + timedelta(hours=6, minutes=30)
    past_midnight = spec.model_copy(update={"starts_at": late, "ends_at": late + timedelta(hours=1)})
    assert (await judged(evening_before, past_midnight)).basis == NOW, "the register covers one day"


# -- the VEN against a real VTN, driving the simulated park ---------------------------------------------

VTN_ID = "LISHUI-TEST-VTN"  # OpenADR wants the vtnID not all lower case (openleadr flags it)
VEN_ID = "VEN-LISHUI-1"
SOURCE = f"openadr:{VTN_ID}"
FACTOR = 60.0
SIM_START = datetime(2027, 7, 14, 9, 2, tzinfo=SHANGHAI)  # Wednesday: the park's loads at their day level
PARK_SITES = ["wjc-hydro", "xdk-park"]
DR_KINDS = ("hydro", "load", "battery")


class RecordingOptService(OptService):
    """EiOpt, which openleadr's VTN leaves unmounted: records each oadrCreateOpt and acknowledges it."""

    def __init__(self, vtn_id: str) -> None:
        super().__init__(vtn_id)
        self.received: list[dict[str, Any]] = []

    @handler("oadrCreateOpt")
    async def create_opt(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.received.append(payload)
        return "oadrCreatedOpt", {"opt_id": payload["opt_id"]}


@dataclass
class Vtn:
    server: OpenADRServer
    url: str
    opt_service: RecordingOptService
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    # (event id, modification number, opt) of every oadrCreatedEvent response the VEN sent
    responses: list[tuple[str, int, str]] = field(default_factory=list)
    reports: dict[str, list[tuple[datetime, float]]] = field(default_factory=lambda: defaultdict(list))

    def add_event(
        self, signal_name: str, signal_type: str, intervals: list[dict[str, Any]], **kw: Any
    ) -> tuple[str, asyncio.Future[str]]:
        """The event's id and a future of the VEN's opt (the VTN's on_event response callback)."""
        answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        event_id = self.server.add_event(
            ven_id=VEN_ID,
            signal_name=signal_name,
            signal_type=signal_type,
            intervals=intervals,
            callback=answered,
            **kw,
        )
        return str(event_id), answered

    def modify(self, event_id: str, change: Callable[[Any], None]) -> None:
        """What a VTN operator does to an event: change it, bump its modificationNumber, resend."""
        ev = utils.find_by(self.server.events[VEN_ID], "event_descriptor.event_id", event_id)
        change(ev)
        utils.increment_event_modification_number(ev)
        self.server.events_updated[VEN_ID] = True

    def opt_reasons(self, event_id: str) -> list[str]:
        return [o["opt_reason"] for o in self.opt_service.received if o.get("event_id") == event_id]


@contextlib.asynccontextmanager
async def running_vtn(port: int = 0) -> AsyncIterator[Vtn]:
    server = OpenADRServer(
        vtn_id=VTN_ID,
        http_host="127.0.0.1",
        http_port=port,
        requested_poll_freq=timedelta(seconds=1),
        show_fingerprint=False,
    )
    opt_service = RecordingOptService(VTN_ID)
    server.app.router.add_post(f"{server.http_path_prefix}/EiOpt", opt_service.handler)
    vtn = Vtn(server, "", opt_service)

    async def on_create_party_registration(payload: dict[str, Any]) -> tuple[str, str]:
        vtn.registered.set()
        return VEN_ID, "REG-1"

    async def on_register_report(report: dict[str, Any]) -> list[tuple[str, Any, timedelta]]:
        def record(r_id: str, values: list[tuple[datetime, float]]) -> None:
            vtn.reports[r_id].extend(values)

        return [
            (d["r_id"], partial(record, d["r_id"]), timedelta(seconds=1))
            for d in report["report_descriptions"]
        ]

    async def spy(message_type: str, payload: dict[str, Any]) -> None:
        if message_type == "oadrCreatedEvent":
            for r in payload.get("event_responses") or []:
                vtn.responses.append((r["event_id"], r["modification_number"], r["opt_type"]))

    server.add_handler("on_create_party_registration", on_create_party_registration)
    server.add_handler("on_register_report", on_register_report)
    hooks.register("before_handle", spy)  # openleadr's hooks are global: removed below
    await server.run()
    host, port = server.app_runner.addresses[0][:2]
    vtn.url = f"http://{host}:{port}{server.http_path_prefix}"
    try:
        yield vtn
    finally:
        hooks.HOOKS["before_handle"].remove(spy)
        await server.stop()


@dataclass
class Park:
    settings: Settings
    clock: SimClock
    dsn: str


@pytest.fixture(scope="module")
async def park(settings: Settings, db_dsn: str) -> AsyncIterator[Park]:
    """The park's devices through gateway and ingest into the database, and the controller leading."""
    scenario = load_scenario("default")
    await seed_registry(settings, scenario)
    await seed_dr_attributes(settings, scenario)
    park_settings = fast_loop_settings(settings, "oadr", control_interval_s=1.0)
    clock = SimClock(factor=FACTOR, start=SIM_START)
    async with serve_fleet(scenario, base_port=0, clock=clock) as fleet:
        gateway = gateway_config(scenario, fleet.endpoints, name=f"oadr-{uuid.uuid4().hex[:6]}")
        async with asyncio.TaskGroup() as tg:
            services = [
                tg.create_task(run_ingest(park_settings), name="ingest"),
                tg.create_task(run_gateway(park_settings, gateway), name="gateway"),
                tg.create_task(
                    run_dr_controller(
                        park_settings, name="oadr", clock=clock, tuning=LoopTuning(max_age_s=15.0)
                    ),
                    name="controller",
                ),
            ]
            try:
                keys = [d.key for d in scenario.devices if d.kind in DR_KINDS]
                await wait_live(db_dsn, keys, fresh_s=5.0, poll_s=0.5)
                yield Park(park_settings, clock, db_dsn)
            finally:
                async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
                    await conn.execute(  # nothing of this module's left for another module's controller
                        "UPDATE dr_events SET state = 'cancelled', reason = 'test over'"
                        " WHERE source = %s AND state IN ('scheduled', 'active')",
                        (SOURCE,),
                    )
                for task in services:
                    task.cancel()


def ven_settings(park: Park, vtn_url: str) -> Settings:
    config = OpenAdrSettings(
        vtn_url=vtn_url,
        ven_name="lishui-test",
        sign_messages=False,
        simple_levels_kw=LEVELS,
        report_min_period_s=1.0,
        register_retry_s=0.5,
        telemetry_max_age_s=15.0,
    )
    return park.settings.model_copy(update={"openadr": config})


@contextlib.asynccontextmanager
async def lishui_ven(park: Park, vtn: Vtn) -> AsyncIterator[None]:
    """Lishui's VEN, registered with the VTN."""
    vtn.registered.clear()
    task = asyncio.create_task(run_ven(ven_settings(park, vtn.url), clock=park.clock))
    try:
        async with asyncio.timeout(15):
            await vtn.registered.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def vtn_and_ven(park: Park) -> AsyncIterator[Vtn]:
    async with running_vtn() as vtn, lishui_ven(park, vtn):
        yield vtn


def _next_slot(t: datetime, lead: timedelta) -> datetime:
    epoch = (t + lead).timestamp()
    return datetime.fromtimestamp(epoch - epoch % 900 + 900, UTC)


async def _rows(conn: psycopg.AsyncConnection, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def _parts(conn: psycopg.AsyncConnection, event_id: str) -> list[dict[str, Any]]:
    return await _rows(
        conn,
        "SELECT * FROM dr_events WHERE source = %s AND external_id LIKE %s ORDER BY id",
        SOURCE,
        f"{event_id}#%",
    )


async def _audit(conn: psycopg.AsyncConnection, dr_event_id: int) -> list[tuple[str, str]]:
    rows = await _rows(
        conn, "SELECT actor, action FROM dr_event_audit WHERE event_id = %s ORDER BY id", dr_event_id
    )
    return [(r["actor"], r["action"]) for r in rows]


async def test_vtn_event_is_opted_in_delivered_reported_and_cancelled(park: Park) -> None:
    target_kw = 600.0
    async with (
        vtn_and_ven(park) as vtn,
        await psycopg.AsyncConnection.connect(park.dsn, autocommit=True) as conn,
    ):
        starts_at = _next_slot(park.clock.now(), timedelta(minutes=2))
        # Four 15-minute intervals asking the same: one Lishui event of an hour (cancelled once delivered).
        intervals = [
            {
                "dtstart": starts_at + timedelta(minutes=15 * i),
                "duration": timedelta(minutes=15),
                "signal_payload": -target_kw,
            }
            for i in range(4)
        ]
        event_id, answered = vtn.add_event(
            "LOAD_DISPATCH", "delta", intervals, targets=[{"resource_id": site} for site in PARK_SITES]
        )
        assert await asyncio.wait_for(answered, 15) == "optIn"
        (row,) = await _parts(conn, event_id)
        cur = await conn.execute(
            "SELECT array_agg(id ORDER BY id) FROM sites WHERE key = ANY(%s)", (PARK_SITES,)
        )
        site_ids = (await cur.fetchone())[0]
        assert (row["kind"], row["target_kw"], row["scope"], row["site_ids"]) == (
            "peak_shaving",
            target_kw,
            "sites",
            site_ids,
        )
        assert (row["starts_at"], row["ends_at"]) == (starts_at, starts_at + timedelta(minutes=60))
        assert row["external_id"] == f"{event_id}#0" and row["state"] == "scheduled"
        assert await _audit(conn, row["id"]) == [(SOURCE, "created")]
        (answer,) = await _rows(conn, "SELECT * FROM openadr_responses WHERE event_id = %s", event_id)
        assert (answer["opt"], answer["dr_event_ids"], answer["vtn_id"]) == ("optIn", [row["id"]], VTN_ID)

        # Delivery: the simulated time jumps to just before the event; the controller takes it from there.
        park.clock.advance(max(0.0, (starts_at - park.clock.now()).total_seconds() - 30))

        async def delivering() -> list[dict[str, Any]]:
            return await _rows(
                conn,
                "SELECT cycle, target_kw, delivered_kw FROM dr_measurements WHERE event_id = %s"
                " AND ts >= %s AND delivered_kw >= 0.9 * target_kw",
                row["id"],
                starts_at + timedelta(minutes=6),
            )

        await until(delivering, 45, "the controller delivering 90 % of the target after its ramp-in")

        async def reported() -> bool:
            return any(v >= 0.5 * target_kw for _, v in vtn.reports["delivered_kw"])

        await until(reported, 15, "the delivered response reported to the VTN")
        assert vtn.reports["load_kw"], "the load report reached the VTN"

        vtn.server.cancel_event(VEN_ID, event_id)

        async def restored() -> list[dict[str, Any]]:
            return await _rows(
                conn,
                "SELECT e.state, r.restored_at FROM dr_events e JOIN dr_event_runtime r ON r.event_id = e.id"
                " WHERE e.id = %s AND e.state = 'cancelled' AND r.restored_at IS NOT NULL",
                row["id"],
            )

        await until(restored, 15, "the cancelled event restored by the controller")
        assert await _audit(conn, row["id"]) == [
            (SOURCE, "created"),
            ("dr_controller:oadr", "activated"),
            (SOURCE, "cancelled"),
        ]
        delivered = await _rows(
            conn, "SELECT max(delivered_kw) AS kw FROM dr_measurements WHERE event_id = %s", row["id"]
        )
        print(
            f"\nmax delivered {delivered[0]['kw']:.0f} kW of {target_kw:.0f}; reports: "
            f"{[round(v) for _, v in vtn.reports['delivered_kw']][-8:]}"
        )


async def test_what_lishui_cannot_serve_is_opted_out_with_reasons(park: Park) -> None:
    async with (
        vtn_and_ven(park) as vtn,
        await psycopg.AsyncConnection.connect(park.dsn, autocommit=True) as conn,
    ):
        starts_at = _next_slot(park.clock.now(), timedelta(hours=3))
        hour = [{"dtstart": starts_at, "duration": timedelta(hours=1), "signal_payload": -50_000.0}]
        park_targets = [{"resource_id": site} for site in PARK_SITES]
        too_much, too_much_answer = vtn.add_event("LOAD_DISPATCH", "delta", hour, targets=park_targets)
        price = [{"dtstart": starts_at, "duration": timedelta(hours=1), "signal_payload": 1.2}]
        priced, priced_answer = vtn.add_event("ELECTRICITY_PRICE", "price", price, targets=park_targets)
        nowhere, nowhere_answer = vtn.add_event(
            "LOAD_DISPATCH", "delta", hour, targets=[{"resource_id": "no-such-site"}]
        )
        for answer in (too_much_answer, priced_answer, nowhere_answer):
            assert await asyncio.wait_for(answer, 15) == "optOut"
        reasons = {
            r["event_id"]: (r["opt"], r["opt_reason"], r["reason"])
            for r in await _rows(conn, "SELECT * FROM openadr_responses WHERE vtn_id = %s", VTN_ID)
        }
        assert reasons[too_much][:2] == ("optOut", MUST_RUN) and "50000 kW" in reasons[too_much][2]
        assert (
            reasons[priced][:2] == ("optOut", "notParticipating")
            and "no supported signal" in reasons[priced][2]
        )
        assert "unknown resources" in reasons[nowhere][2]
        for event_id in (too_much, priced, nowhere):
            assert await _parts(conn, event_id) == [], "an event Lishui opted out of is not created"

        async def reasons_at_vtn() -> bool:
            return all(vtn.opt_reasons(e) for e in (too_much, priced, nowhere))

        await until(reasons_at_vtn, 10, "the opt-out reasons at the VTN's EiOpt")
        assert vtn.opt_reasons(too_much) == [MUST_RUN]


async def test_modifications_amend_split_and_cancel_the_parts_and_a_restart_changes_nothing(
    park: Park,
) -> None:
    async with running_vtn() as vtn, await psycopg.AsyncConnection.connect(park.dsn, autocommit=True) as conn:
        async with lishui_ven(park, vtn):
            # Tomorrow morning (simulated): a day-ahead event, two SIMPLE levels, one hour each.
            starts_at = _next_slot(park.clock.now(), timedelta(hours=24))
            intervals = [
                {
                    "dtstart": starts_at + timedelta(hours=i),
                    "duration": timedelta(hours=1),
                    "signal_payload": level,
                }
                for i, level in enumerate((1, 2))
            ]
            event_id, answered = vtn.add_event(
                "SIMPLE", "level", intervals, targets=[{"resource_id": site} for site in PARK_SITES]
            )
            assert await asyncio.wait_for(answered, 15) == "optIn"
            first, second = await _parts(conn, event_id)
            assert (first["target_kw"], second["target_kw"]) == (LEVELS[0], LEVELS[1])
            assert first["ends_at"] == second["starts_at"] == starts_at + timedelta(hours=1)
            assert first["notice"] == "day_ahead"

            def level_1_throughout(ev: Any) -> None:
                ev.event_signals[0].intervals[1]["signal_payload"] = 1

            vtn.modify(event_id, level_1_throughout)

            async def merged() -> list[dict[str, Any]]:
                rows = await _parts(conn, event_id)  # the second part cancelled, then the first amended
                return rows if rows[1]["state"] == "cancelled" and rows[0]["version"] > 1 else []

            first, second = await until(merged, 15, "the modification applied")
            assert (first["state"], first["ends_at"], first["version"]) == (
                "scheduled",
                starts_at + timedelta(hours=2),
                2,
            )
            assert "modification 1" in second["reason"]
            assert await _audit(conn, first["id"]) == [(SOURCE, "created"), (SOURCE, "amended")]

        # A new VEN process: the VTN sends the event again (modification 1) and hears the same answer;
        # nothing in the database moves.
        before = await _parts(conn, event_id)
        heard = len(vtn.responses)
        async with lishui_ven(park, vtn):

            async def answered_again() -> list[tuple[str, int, str]]:
                return [r for r in vtn.responses[heard:] if r[0] == event_id]

            assert await until(answered_again, 15, "the restarted VEN's answer") == [(event_id, 1, "optIn")]
            assert await _parts(conn, event_id) == before

            vtn.server.cancel_event(VEN_ID, event_id)

            async def cancelled() -> bool:
                return (await _parts(conn, event_id))[0]["state"] == "cancelled"

            await until(cancelled, 15, "the VTN's cancellation applied")
        answers = await _rows(
            conn,
            "SELECT modification_number, opt FROM openadr_responses WHERE event_id = %s ORDER BY 1",
            event_id,
        )
        assert [(a["modification_number"], a["opt"]) for a in answers] == [
            (0, "optIn"),
            (1, "optIn"),
            (2, "optIn"),
        ]
        assert (event_id, 2, "optIn") in vtn.responses


async def test_the_ven_waits_for_its_vtn_and_refuses_half_a_tls_setup(park: Park) -> None:
    with socket.socket() as probe:  # a port nobody listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
    task = asyncio.create_task(run_ven(ven_settings(park, url), clock=park.clock))
    try:
        await asyncio.sleep(1.0)  # a failed registration or two
        assert not task.done()
        async with running_vtn(port) as vtn:
            async with asyncio.timeout(15):
                await vtn.registered.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    half = park.settings.model_copy(update={"openadr": OpenAdrSettings(cert="ven.pem", key="ven.key")})
    with pytest.raises(ValueError, match="ca_file"):
        await run_ven(half)
