"""The controller measuring against a history baseline: seeded ``telemetry_15m`` history, a program that
names high 5 of 10, and the fallback to meter-before (with the reason logged and recorded) when the
program's method cannot be computed. On the test database and broker; no simulators: live readings are
inserted as a gateway would have them, and the event clock is fixed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from core import registry
from core.dr.baselines import CHINA
from core.dr.events import EventState
from core.dr.program_baseline import past_event_days
from core.settings import Settings
from dr_controller import store
from dr_controller.bus import CommandBus
from dr_controller.controller import Controller

EVENT_DAY = date(2024, 4, 17)  # a Wednesday
STARTS = datetime(2024, 4, 17, 9, 15, tzinfo=CHINA)
PAST_EVENT_DAY = date(2024, 4, 15)  # a Monday with an event: never a similar day
LIVE_KW = (150.0, 60.0)  # what the two loads draw now


class FixedClock:
    factor = 1.0

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def level_kw(device: int, day: date) -> float:
    """Device 0 follows the day of the month (so the highest days are known); device 1 is flat."""
    if day.weekday() >= 5:
        return 9999.0  # weekends: never similar days
    if day == PAST_EVENT_DAY:
        return 5000.0
    return 100.0 + 10 * day.day if device == 0 else 50.0


@dataclass
class Setup:
    site_id: int
    device_ids: list[int]


@pytest.fixture(scope="module")
async def history(db_dsn: str) -> AsyncIterator[Setup]:
    tag = uuid.uuid4().hex[:6]
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        site_id = await registry.upsert_site(conn, f"hist-{tag}", "history works", town_key="lipu")
        ids = [
            await registry.upsert_device(
                conn,
                f"hist-load-{i}-{tag}",
                f"hist-{tag}",
                "load",
                profile="lixian-flexload-v1",
                rated_power_w=500_000,
            )
            for i in range(2)
        ]
        rows = []
        day = EVENT_DAY - timedelta(days=20)
        while day < EVENT_DAY:
            for slot in range(96):
                bucket = datetime.combine(day, datetime.min.time(), CHINA) + timedelta(minutes=15 * slot)
                for i, device_id in enumerate(ids):
                    rows.append((bucket, device_id, 3, 3 * level_kw(i, day) * 1000, bucket))
            day += timedelta(days=1)
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO telemetry_15m (bucket, device_id, metric_id, n, sum, min, max, last, last_ts)"
                " VALUES (%s, %s, 1, %s, %s, 0, 0, 0, %s)",
                rows,
            )
        past = await _event(conn, datetime.combine(PAST_EVENT_DAY, STARTS.timetz()), site_id, "high_5_of_10")
        await store.transition(conn, past, EventState.SCHEDULED, EventState.ACTIVE, "test")
        await store.save_activation(conn, past, "test", STARTS, "meter_before", None, [])
        await store.transition(conn, past, EventState.ACTIVE, EventState.COMPLETED, "test")
        await store.mark_restored(conn, past, STARTS)
        yield Setup(int(site_id), [int(i) for i in ids])


async def _event(conn: psycopg.AsyncConnection, starts: datetime, site_id: int, baseline: str) -> int:
    cur = await conn.execute(
        "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope, site_ids, baseline)"
        " VALUES ('peak_shaving', 50, %s, %s, 'intraday', 'sites', %s, %s) RETURNING id",
        (starts, starts + timedelta(hours=1), [site_id], baseline),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _live(conn: psycopg.AsyncConnection, device_ids: list[int]) -> None:
    now = datetime.now(UTC)
    for device_id, kw in zip(device_ids, LIVE_KW, strict=True):
        await conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric_id, value) VALUES (%s, %s, 1, %s), (%s, %s, 29, 0)",
            (now, device_id, kw * 1000, now, device_id),
        )


@pytest.fixture
async def controller(settings: Settings, db_dsn: str) -> AsyncIterator[Controller]:
    async with (
        await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn,
        aiomqtt.Client(
            settings.mqtt.host, settings.mqtt.port, identifier=f"hist-{uuid.uuid4().hex[:8]}"
        ) as c,
    ):
        yield Controller(settings, conn, CommandBus(c, settings.topic_root), FixedClock(STARTS), "hist")


async def _activate(ctl: Controller, event_id: int) -> store.EventRecord:
    event = await store.event_by_id(ctl.conn, event_id)
    assert await store.transition(ctl.conn, event_id, EventState.SCHEDULED, EventState.ACTIVE, ctl.actor)
    await ctl._activate(event, STARTS + timedelta(minutes=5))
    return event


async def _close(conn: psycopg.AsyncConnection, event_id: int) -> None:
    """Out of every other controller's way: cancelled and marked restored."""
    await conn.execute(
        "UPDATE dr_events SET state = 'cancelled', reason = 'test over' WHERE id = %s", (event_id,)
    )
    await store.mark_restored(conn, event_id, STARTS)


async def test_past_event_days_are_the_days_an_event_ran(
    history: Setup, conn: psycopg.AsyncConnection
) -> None:
    days = await past_event_days(conn, EVENT_DAY - timedelta(days=5), EVENT_DAY - timedelta(days=1))
    assert PAST_EVENT_DAY in days and EVENT_DAY not in days


async def test_controller_measures_against_high_5_of_10_from_history(
    history: Setup, controller: Controller
) -> None:
    conn = controller.conn
    await _live(conn, history.device_ids)
    event_id = await _event(conn, STARTS, history.site_id, "high_5_of_10")
    try:
        event = await _activate(controller, event_id)
        runtime = await store.load_runtime(conn, event_id)
        assert runtime is not None
        assert (runtime["baseline_used"], runtime["baseline_note"]) == ("high_5_of_10", None)
        # The ten similar days: 16, 12, 11, 10, 9, 8, 5, 4, 3, 2 April (the weekend and the 15th, an
        # event day, left out); the five highest are 16, 12, 11, 10, 9: device 0 averages 216 kW there.
        expected = (260 + 220 + 210 + 200 + 190) / 5 + 50
        run = controller.runs[event_id]
        assert run.load_baseline is not None
        assert list(run.load_baseline) == pytest.approx([expected] * 4)

        await controller._control(run, STARTS + timedelta(minutes=5))
        cur = await conn.execute(
            "SELECT baseline_kw, delivered_kw FROM dr_measurements WHERE event_id = %s", (event.id,)
        )
        assert await cur.fetchone() == pytest.approx((expected, expected - sum(LIVE_KW)))
    finally:
        await _close(conn, event_id)


async def test_controller_falls_back_to_meter_before_saying_why(
    history: Setup, controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    conn = controller.conn
    await _live(conn, history.device_ids)
    # The adjusted method needs the event day's morning, which the history lacks.
    event_id = await _event(conn, STARTS, history.site_id, "high_5_of_10_adjusted")
    try:
        with caplog.at_level(logging.WARNING, logger="dr_controller"):
            await _activate(controller, event_id)
        runtime = await store.load_runtime(conn, event_id)
        assert runtime is not None and runtime["baseline_used"] == "meter_before"
        assert "same-day adjustment" in runtime["baseline_note"]
        fallback = [r for r in caplog.records if r.getMessage() == "baseline fallback"]
        assert fallback and "same-day adjustment" in fallback[0].reason  # type: ignore[attr-defined]
        assert controller.runs[event_id].load_baseline is None
        refs = {r.device_id: r.reference_kw for r in await store.load_references(conn, event_id)}
        assert [refs[d] for d in history.device_ids] == pytest.approx(list(LIVE_KW))
    finally:
        await _close(conn, event_id)
