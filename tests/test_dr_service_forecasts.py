"""The DR controller service issues day-ahead forecasts by itself: at start-up when tomorrow has none,
again at the daily time, only as the leader, not again after a takeover; it reports yesterday's error,
and the load forecast leaves past event days out of its history.

On the test database with a shifted wall clock: the service believes it is 2022-03-16 (a Wednesday),
15:59:50 Asia/Shanghai, ten seconds before its 16:00 run. One site's meter has 15-minute history from
February: every working day the same profile, weekends lower, an event day (2022-03-10) at half of it
and yesterday 10 % above. No other test writes 2022.
"""

from __future__ import annotations

import asyncio
import contextlib
import time as monotonic_time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from core import registry
from core.dr.baselines import CHINA, SLOTS_PER_DAY, Calendar
from core.dr.forecast import forecast_load
from core.dr.forecast_store import issue_day_ahead
from core.settings import DrSettings, Settings
from dr_controller.forecast_schedule import needs_issue, next_run_at
from dr_controller.service import run_dr_controller

pytestmark = pytest.mark.timeout(180)

TODAY = date(2022, 3, 16)
TOMORROW, YESTERDAY = TODAY + timedelta(days=1), TODAY - timedelta(days=1)
EVENT_DAY = date(2022, 3, 10)  # a Thursday, like tomorrow: the most recent but one similar day
FIRST = date(2022, 2, 1)
AT = time(16, 0)
START = datetime.combine(TODAY, time(15, 59, 50), CHINA)
HOURS = np.arange(SLOTS_PER_DAY) / 4
WORKING = 500 + 400 * np.exp(-(((HOURS - 10) / 3) ** 2))
WEEKDAYS = Calendar()


def history_kw(day: date) -> np.ndarray:
    if day == EVENT_DAY:
        return 0.5 * WORKING
    if day == YESTERDAY:
        return 1.1 * WORKING
    return WORKING if WEEKDAYS.is_working_day(day) else 0.6 * WORKING


# --- the schedule ---------------------------------------------------------------------------------


@given(st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)))
def test_next_run_is_the_next_local_time_within_a_day(now: datetime) -> None:
    at = next_run_at(now, AT, CHINA)
    assert now < at <= now + timedelta(days=1)
    assert at.astimezone(CHINA).time() == AT


def test_issue_is_due_when_missing_or_older_than_todays_time() -> None:
    today_at = datetime.combine(TODAY, AT, CHINA)
    before, after = today_at - timedelta(hours=1), today_at + timedelta(minutes=5)
    assert needs_issue(before, AT, CHINA, None)  # start-up, nothing for tomorrow yet
    assert not needs_issue(before, AT, CHINA, before - timedelta(hours=3))  # caught up this morning
    assert needs_issue(today_at, AT, CHINA, before)  # the daily run reissues with fresher history
    assert needs_issue(after, AT, CHINA, before)  # a run missed at 16:00 is made up at start-up
    assert not needs_issue(after, AT, CHINA, today_at)  # done today: a takeover does not reissue


# --- the service ----------------------------------------------------------------------------------


@dataclass
class Site:
    key: str
    meter: int


async def _write_day(conn: psycopg.AsyncConnection[Any], device_id: int, day: date, kw: np.ndarray) -> None:
    start = datetime.combine(day, time(), CHINA)
    async with conn.cursor() as cur:
        async with cur.copy(
            "COPY telemetry_15m (bucket, device_id, metric_id, n, sum, min, max, last, last_ts) FROM STDIN"
        ) as copy:
            for slot, value in enumerate(kw):
                bucket = start + timedelta(minutes=15 * slot)
                w = float(value) * 1000
                await copy.write_row((bucket, device_id, 1, 2, 2 * w, w, w, w, bucket))


@pytest.fixture(scope="module")
async def site(db_dsn: str) -> AsyncIterator[Site]:
    tag = uuid.uuid4().hex[:6]
    key = f"sf-park-{tag}"
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await registry.upsert_site(conn, key, "forecast park", town_key="lipu")
        meter = await registry.upsert_device(conn, f"{key}-meter", key, "meter", rated_power_w=2e6)
        day = FIRST
        while day < TODAY:
            await _write_day(conn, meter, day, history_kw(day))
            day += timedelta(days=1)
        starts = datetime.combine(EVENT_DAY, time(10, 0), CHINA)
        cur = await conn.execute(
            "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope)"
            " VALUES ('peak_shaving', 200, %s, %s, 'intraday', 'county') RETURNING id",
            (starts, starts + timedelta(hours=1)),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO dr_event_runtime (event_id, baseline_used, controller, activated_at, restored_at)"
            " VALUES (%s, 'meter_before', 'test', %s, %s)",
            (row[0], starts, starts),
        )
        await conn.execute("UPDATE dr_events SET state = 'cancelled' WHERE id = %s", (row[0],))
        # Yesterday's forecast, issued the day before at 16:00 (its error is reported today).
        await issue_day_ahead(
            conn, YESTERDAY, issued_at=datetime.combine(YESTERDAY, AT, CHINA) - timedelta(days=1)
        )
    yield Site(key, meter)


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _issues(conn: psycopg.AsyncConnection[Any]) -> list[datetime]:
    cur = await conn.execute(
        "SELECT DISTINCT issued_at FROM forecasts WHERE target_day = %s ORDER BY 1", (TOMORROW,)
    )
    return [r[0] for r in await cur.fetchall()]


async def _until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = monotonic_time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        assert monotonic_time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


async def _leader(conn: psycopg.AsyncConnection[Any], names: list[str]) -> str | None:
    cur = await conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE application_name = ANY(%s)",
        ([f"lishui-dr-{n}-work" for n in names],),
    )
    rows = [r[0] for r in await cur.fetchall()]
    return next((n for n in names if f"lishui-dr-{n}-work" in rows), None)


async def test_the_leader_issues_at_start_up_and_at_the_daily_time_and_reports_yesterday(
    site: Site, settings: Settings, db_dsn: str
) -> None:
    offset = START - datetime.now(UTC)

    def wall() -> datetime:
        return datetime.now(UTC) + offset

    tag = uuid.uuid4().hex[:6]
    dr = DrSettings(control_interval_s=1.0, leader_lock_key=int(tag, 16), forecast_at=AT)
    fs = settings.model_copy(update={"dr": dr})
    runs_before = _sample("lishui_dr_forecast_runs_total")
    names = [f"sf-a-{tag}", f"sf-b-{tag}"]
    tasks = {n: asyncio.create_task(run_dr_controller(fs, name=n, wall=wall), name=n) for n in names}
    try:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            first = await _until(lambda: _issues(conn), 60.0, "the start-up issue")
            assert len(first) == 1 and first[0] < datetime.combine(TODAY, AT, CHINA), first
            both = await _until(
                lambda: _wait_for_count(conn, 2), 60.0, "the 16:00 issue (one leader, no duplicate)"
            )
            assert both[1] >= datetime.combine(TODAY, AT, CHINA), both
            leader = await _leader(conn, names)
            assert leader is not None

            async def runs_done(n: float) -> bool:
                return _sample("lishui_dr_forecast_runs_total") - runs_before >= n

            await _until(lambda: runs_done(2), 30.0, "the leader's two runs")

            # Yesterday's error, as exported: the county (this site alone has load history) drew 10 %
            # more than forecast.
            mape = _sample("lishui_dr_forecast_county_error_pct", kind="load", measure="mape")
            assert mape == pytest.approx(100 / 11, rel=1e-6)

            # What was issued leaves the event day out, level and all.
            cur = await conn.execute(
                "SELECT f.kw, f.detail FROM forecasts f JOIN sites s ON s.id = f.site_id"
                " WHERE f.target_day = %s AND f.kind = 'load' AND s.key = %s AND f.issued_at = %s",
                (TOMORROW, site.key, both[1]),
            )
            row = await cur.fetchone()
            assert row is not None
            kw, detail = np.asarray(row[0]), row[1]
            history = {
                d: history_kw(d) for d in (FIRST + timedelta(days=i) for i in range((TODAY - FIRST).days))
            }
            expected = forecast_load(history, TOMORROW, WEEKDAYS, excluded={EVENT_DAY})
            assert EVENT_DAY.isoformat() not in detail["similar_days"]
            assert kw == pytest.approx(expected.kw, rel=1e-9)
            assert not np.allclose(kw, forecast_load(history, TOMORROW, WEEKDAYS).kw)  # it mattered
            cur = await conn.execute(
                "SELECT detail FROM forecasts WHERE target_day = %s AND kind = 'load' AND site_id IS NULL"
                " AND issued_at = %s",
                (TOMORROW, both[1]),
            )
            county = await cur.fetchone()
            assert county is not None and EVENT_DAY.isoformat() in county[0]["event_days_excluded"]

            # The leader goes; the standby takes over, runs (reporting again) but does not reissue.
            runs = _sample("lishui_dr_forecast_runs_total")
            tasks[leader].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[leader]

            await _until(lambda: runs_done(runs - runs_before + 1), 30.0, "the standby's run")
            assert await _issues(conn) == both
    finally:
        for task in tasks.values():
            task.cancel()
        for task in tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _wait_for_count(conn: psycopg.AsyncConnection[Any], n: int) -> list[datetime] | None:
    issues = await _issues(conn)
    assert len(issues) <= n, f"issued more often than expected: {issues}"
    return issues if len(issues) == n else None
