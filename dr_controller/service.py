"""The demand-response controller as a service: leader election, then the control cycle.

Only one controller acts at a time. Each instance opens a dedicated connection and tries the
session-level advisory lock ``settings.dr.leader_lock_key`` on it every ``STANDBY_POLL_S``; the holder is
the leader. The lock lives exactly as long as that connection: if the leader dies (process killed,
connection dropped or terminated), the server releases it and a standby has it within a poll. The
leader checks its lock connection at the start of every cycle and stops acting the moment it fails,
so two controllers overlap at most by the one cycle in flight. A takeover resumes active events from
the tables (references, integrator, touched resources) and re-sends every command, renewing the holds;
devices whose commands are not renewed fall back by themselves when their ``hold_s`` runs out.

The leader also issues tomorrow's day-ahead forecasts every day and reports yesterday's error
(``forecast_schedule``, unless ``dr.forecast_daily`` is off), beside the control cycle, never in it.

CLI: ``lishui dr`` runs ``core.service.run(lambda: run_dr_controller(settings))``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiomqtt
import psycopg

from core import mqtt as core_mqtt
from core.payloads import utcnow
from core.settings import Settings
from dr_controller import metrics
from dr_controller.bus import CommandBus
from dr_controller.controller import Clock, Controller, LoopTuning, WallClock
from dr_controller.forecast_schedule import run_daily_forecasts

__all__ = ["LeadershipLost", "run_dr_controller"]

log = logging.getLogger(__name__)

STANDBY_POLL_S = 1.0
LOCK_CHECK_TIMEOUT_S = 5.0
RETRY_S = 2.0


class LeadershipLost(RuntimeError):
    pass


def _cancel_requested() -> bool:
    """A cancellation turned into a connection error on its way out (psycopg cancels the query and may
    then raise OperationalError instead) must still stop the service, not send it back to stand by."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def default_name() -> str:
    return f"{socket.gethostname().split('.')[0].lower()}-{uuid.uuid4().hex[:6]}"


async def _connect(settings: Settings, name: str, role: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        settings.db.dsn, autocommit=True, application_name=f"lishui-dr-{name}-{role}"
    )


async def _wait_for_lock(conn: psycopg.AsyncConnection[Any], key: int) -> None:
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            return
        await asyncio.sleep(STANDBY_POLL_S)


async def _check_lock(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        async with asyncio.timeout(LOCK_CHECK_TIMEOUT_S):
            await conn.execute("SELECT 1")
    except (psycopg.Error, TimeoutError) as err:
        raise LeadershipLost(f"leader lock connection failed: {err}") from err


async def _lead(
    settings: Settings,
    lock_conn: psycopg.AsyncConnection[Any],
    name: str,
    clock: Clock,
    tuning: LoopTuning,
    wall: Callable[[], datetime],
) -> None:
    """Run control cycles until the lock connection fails (LeadershipLost) or cancellation."""
    interval = settings.dr.control_interval_s
    async with (
        await _connect(settings, name, "work") as conn,
        core_mqtt.client(settings.mqtt, f"lishui-dr-{name}") as client,
    ):
        bus = CommandBus(client, settings.topic_root)
        await bus.subscribe_results()
        controller = Controller(settings, conn, bus, clock, name, tuning)
        async with asyncio.TaskGroup() as tg:
            side = [tg.create_task(bus.serve_results(controller.on_result), name="dr-results")]
            if settings.dr.forecast_daily:
                side.append(tg.create_task(run_daily_forecasts(settings, wall), name="dr-forecasts"))
            try:
                next_at = time.monotonic()
                while True:
                    await _check_lock(lock_conn)
                    started = time.perf_counter()
                    try:
                        await controller.cycle()
                    except psycopg.OperationalError:
                        raise
                    except Exception:  # one bad cycle must not stop the grid's response
                        if _cancel_requested():
                            raise
                        metrics.CYCLE_ERRORS.inc()
                        log.exception("control cycle failed")
                    took = time.perf_counter() - started
                    metrics.CYCLE_SECONDS.observe(took)
                    if took > interval:
                        log.warning("control cycle ran over", extra={"took_s": round(took, 2)})
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    if next_at < time.monotonic() - interval:  # ran over: do not queue cycles up
                        next_at = time.monotonic()
            finally:
                for task in side:
                    task.cancel()


async def run_dr_controller(
    settings: Settings,
    *,
    name: str | None = None,
    clock: Clock | None = None,
    tuning: LoopTuning | None = None,
    wall: Callable[[], datetime] = utcnow,
) -> None:
    """Entry point: stand by for the leader lock, lead while holding it, stand by again if it is lost.
    ``clock`` is the event clock; ``wall`` the clock of the daily forecasts (tests may shift it)."""
    name = name or default_name()
    clock = clock or WallClock()
    tuning = tuning or LoopTuning()
    key = settings.dr.leader_lock_key
    while True:
        try:
            async with await _connect(settings, name, "lock") as lock_conn:
                log.info("standing by for the leader lock", extra={"controller": name})
                await _wait_for_lock(lock_conn, key)
                metrics.LEADER.set(1)
                metrics.TAKEOVERS.inc()
                log.info("leader", extra={"controller": name})
                try:
                    await _lead(settings, lock_conn, name, clock, tuning, wall)
                finally:
                    metrics.LEADER.set(0)
        except* (LeadershipLost, psycopg.OperationalError, aiomqtt.MqttError) as group:
            log.warning("not leading", extra={"controller": name, "reason": str(group.exceptions[0])})
        if _cancel_requested():
            raise asyncio.CancelledError
        await asyncio.sleep(RETRY_S)
