"""Day-ahead forecasts issued by the leader every day, without anyone asking.

Each day at ``dr.forecast_at`` local time (``dr.timezone``; 16:00 Asia/Shanghai by default, in time
for the next day's planning and capacity register) the leading controller issues tomorrow's load and
PV forecasts for every site and the county (``core.dr.forecast_store.issue_day_ahead``, the year's holidays
from the settings, no cloud input: PV takes the recent typical clear-sky index). At start-up or
takeover it issues them at once if tomorrow has none yet, or if today's time has passed and none was
issued since (a missed run); otherwise it waits for the time. Each run also reports yesterday's error
(``core.dr.forecast_store.error_report``): the county's figures per kind are logged and exported as gauges;
the whole report is the API's ``GET /api/v1/forecasts/error``.

The schedule follows the wall clock, not the controller's event clock: forecasts are about calendar
days of telemetry, which is stamped in wall time. A run (queries and pvlib's clear-sky model, seconds
of CPU for a county) goes on its own connection in a worker thread with its own event loop, so the
control cycle never waits for it; a run that fails is retried after ``RETRY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import Counter, Gauge

from core.dr.baselines import Calendar
from core.dr.forecast import PLAIN_WEEK
from core.dr.forecast_store import ErrorRow, IssuedForecast, error_report, issue_day_ahead
from core.payloads import utcnow
from core.settings import Settings

__all__ = [
    "ForecastRun",
    "forecast_once",
    "last_issued",
    "needs_issue",
    "next_run_at",
    "run_daily_forecasts",
]

log = logging.getLogger(__name__)

RETRY_S = 300.0
MAX_SLEEP_S = 60.0  # the clock is looked at again at least this often (it may be set, or jump)

RUNS = Counter("lishui_dr_forecast_runs", "Daily forecast runs done (issuing or not)")
ISSUED = Counter("lishui_dr_forecasts_issued", "Day-ahead forecast runs that issued tomorrow's forecasts")
RUN_ERRORS = Counter("lishui_dr_forecast_run_errors", "Daily forecast runs that failed (retried)")
LAST_TARGET_DAY = Gauge(
    "lishui_dr_forecast_last_target_day_seconds", "Local midnight (Unix time) of the day last forecast"
)
COUNTY_ERROR = Gauge(
    "lishui_dr_forecast_county_error_pct",
    "Error of yesterday's county day-ahead forecast (NaN: not computable)",
    ["kind", "measure"],  # kind load | pv; measure mape | nmae | bias
)


def scheduled_at(day: date, at: time, tz: tzinfo) -> datetime:
    return datetime.combine(day, at, tz)


def next_run_at(now: datetime, at: time, tz: tzinfo) -> datetime:
    """The first scheduled instant strictly after ``now``."""
    today = now.astimezone(tz).date()
    candidate = scheduled_at(today, at, tz)
    return candidate if candidate > now else scheduled_at(today + timedelta(days=1), at, tz)


def needs_issue(now: datetime, at: time, tz: tzinfo, last: datetime | None) -> bool:
    """Whether tomorrow's forecasts are due, given when they were last issued (None: never). Before
    today's time: only if there are none; from then on: unless issued at or after today's time."""
    today_at = scheduled_at(now.astimezone(tz).date(), at, tz)
    if now < today_at:
        return last is None
    return last is None or last < today_at


async def last_issued(conn: psycopg.AsyncConnection[Any], day: date) -> datetime | None:
    """When forecasts of ``day`` were last issued."""
    cur = await conn.execute("SELECT max(issued_at) FROM forecasts WHERE target_day = %s", (day,))
    row = await cur.fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class ForecastRun:
    today: date
    issued: IssuedForecast | None  # None: tomorrow's were already issued
    errors: list[ErrorRow]  # yesterday's latest series against what happened (empty: none issued)

    def county_error(self, kind: str) -> ErrorRow | None:
        return next((r for r in self.errors if r.series.site_id is None and r.series.kind == kind), None)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _report(run: ForecastRun) -> None:
    yesterday = run.today - timedelta(days=1)
    for kind in ("load", "pv"):
        row = run.county_error(kind)
        err = None if row is None else row.error
        for measure, value in (
            ("mape", None if err is None else err.mape_pct),
            ("nmae", None if err is None else err.nmae_pct),
            ("bias", None if err is None else err.bias_pct),
        ):
            COUNTY_ERROR.labels(kind, measure).set(_nan(value))
        if err is not None:
            log.info(
                "day-ahead forecast error",
                extra={
                    "day": yesterday.isoformat(),
                    "kind": kind,
                    "mape_pct": err.mape_pct,
                    "nmae_pct": err.nmae_pct,
                    "bias_pct": err.bias_pct,
                    "intervals": err.slots,
                    "series": len(run.errors),
                },
            )
    if not run.errors:
        log.info("no day-ahead forecast to report for yesterday", extra={"day": yesterday.isoformat()})


async def forecast_once(
    conn: psycopg.AsyncConnection[Any],
    now: datetime,
    at: time,
    tz: tzinfo,
    calendar: Calendar = PLAIN_WEEK,
) -> ForecastRun:
    """One run at ``now``: tomorrow's forecasts if due (``needs_issue``), and yesterday's error."""
    today = now.astimezone(tz).date()
    tomorrow = today + timedelta(days=1)
    issued = None
    if needs_issue(now, at, tz, await last_issued(conn, tomorrow)):
        issued = await issue_day_ahead(conn, tomorrow, calendar=calendar, issued_at=now)
        ISSUED.inc()
        LAST_TARGET_DAY.set(scheduled_at(tomorrow, time(), tz).timestamp())
    errors = await error_report(conn, today - timedelta(days=1), now)
    run = ForecastRun(today, issued, errors)
    _report(run)
    RUNS.inc()
    return run


def _run_in_thread(dsn: str, now: datetime, at: time, tz: tzinfo, calendar: Calendar) -> ForecastRun:
    async def job() -> ForecastRun:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, application_name="lishui-dr-forecasts"
        ) as conn:
            return await forecast_once(conn, now, at, tz, calendar)

    return asyncio.run(job())


async def _sleep_until(when: datetime, now: Callable[[], datetime]) -> None:
    while True:
        left = (when - now()).total_seconds()
        if left <= 0:
            return
        await asyncio.sleep(min(left, MAX_SLEEP_S))


async def run_daily_forecasts(settings: Settings, now: Callable[[], datetime] = utcnow) -> None:
    """Run at once (catching up), then every day at ``dr.forecast_at``; until cancelled. ``now``: the
    wall clock (a test may shift it)."""
    dr = settings.dr
    tz = ZoneInfo(dr.timezone)
    calendar = Calendar(frozenset(dr.holidays), frozenset(dr.make_up_workdays))
    while True:
        started = now()
        try:
            run = await asyncio.to_thread(
                _run_in_thread, settings.db.dsn, started, dr.forecast_at, tz, calendar
            )
        except Exception as err:  # the next run may well succeed: the control cycle goes on regardless
            RUN_ERRORS.inc()
            log.warning("daily forecast run failed", extra={"reason": repr(err), "retry_s": RETRY_S})
            await _sleep_until(started + timedelta(seconds=RETRY_S), now)
            continue
        if run.issued is not None:
            log.info(
                "tomorrow's forecasts issued",
                extra={"target_day": run.issued.target_day.isoformat(), "series": len(run.issued.series)},
            )
        # From the run's start: a run that went past the time is followed by the one due at it.
        await _sleep_until(next_run_at(started, dr.forecast_at, tz), now)
