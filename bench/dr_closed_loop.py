"""The closed loop's figures for ``bench/dr.py``, on real services: the simulated county (clock x60),
gateway, Mosquitto, ingest into a fresh TimescaleDB database, and the controller, all in-process.

- ``event_to_first_command_s``: from the event's activation (its ``activated`` audit row, written in
  the controller's transition) to the first command seen on the broker by a subscriber here (both wall
  clock, same machine). Includes the cycle's reads, the allocation and the publish.
- ``tracking_error_pct``: mean |delivered - target| / target over the 15-minute intervals after the first
  (the ramp-in), delivered as the controller measured it from telemetry against the baseline
  (meter-before: a fresh database has no history), for a 12 MW, 45-minute event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg

from core import db, topics
from core.settings import DatabaseSettings, DrSettings, IngestSettings, Settings
from dr_controller.controller import LoopTuning
from dr_controller.service import run_dr_controller
from gateway.service import run_gateway
from ingest.service import run_ingest
from lishui.composition import gateway_config, seed_registry
from simulators.clock import SimClock
from simulators.fleet import serve_fleet
from simulators.scenario import load_scenario

SERVER_DSN = os.environ.get("LISHUI_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
FACTOR = 60.0
START = datetime.fromisoformat("2026-07-15T09:02:00+08:00")
TARGET_KW = 12_000.0
MINUTES = 45
DR_KINDS = ("hydro", "load", "battery")
ATTRIBUTES = ("head_m", "reservoir_area_m2", "min_level_m", "floor_w", "max_curtailable_w", "capacity_wh")

EVENT_SQL = (
    "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope, baseline)"
    " VALUES ('peak_shaving', %s, %s, %s, 'intraday', 'county', 'meter_before_15min') RETURNING id"
)


async def _first_command(settings: Settings, seen: list[float]) -> None:
    async with aiomqtt.Client(
        settings.mqtt.host, settings.mqtt.port, identifier=f"bench-{uuid.uuid4().hex[:8]}"
    ) as c:
        await c.subscribe(topics.subscription(topics.Channel.CMD, settings.topic_root), qos=1)
        async for _ in c.messages:
            seen.append(time.time())


async def _prepare(dsn: str) -> None:
    await db.ensure_database(dsn)
    await db.migrate(dsn)


async def _figures(dsn: str, event_id: int, starts_at: datetime, seen: list[float]) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT at FROM dr_event_audit WHERE event_id = %s AND action = 'activated'", (event_id,)
        )
        row = await cur.fetchone()
        cur = await conn.execute(
            "SELECT floor(extract(epoch FROM ts - %s) / 900)::int, avg(target_kw), avg(delivered_kw)"
            " FROM dr_measurements WHERE event_id = %s GROUP BY 1 ORDER BY 1",
            (starts_at, event_id),
        )
        intervals = await cur.fetchall()
    activated = row[0].timestamp() if row else None
    first = min((t for t in seen if activated is None or t >= activated - 1), default=None)
    after_ramp = [abs(d - t) / t * 100 for slot, t, d in intervals if slot >= 1 and t]
    return {
        "event_to_first_command_s": None
        if activated is None or first is None
        else round(first - activated, 4),
        "tracking_error_pct": round(sum(after_ramp) / len(after_ramp), 2) if after_ramp else None,
        "intervals": [[int(s), round(t), round(d)] for s, t, d in intervals],
    }


async def run_closed_loop() -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    dsn = db.with_database(SERVER_DSN, f"lishui_bench_dr_{run_id}")
    await _prepare(dsn)
    settings = Settings(
        db=DatabaseSettings(dsn=dsn),
        topic_root=f"lishui-bench-dr-{run_id}",
        dr=DrSettings(control_interval_s=2.0, hold_s=10.0, command_expiry_s=5.0, forecast_daily=False),
        ingest=IngestSettings(batch_max_delay_s=0.3, client_id=f"bench-dr-ingest-{run_id}"),
        _env_file=None,  # type: ignore[call-arg]
    )
    scenario = load_scenario("county")
    try:
        await seed_registry(settings, scenario)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for d in scenario.devices:
                attrs = {k: v for k, v in d.sim.items() if k in ATTRIBUTES}
                if attrs:
                    await conn.execute(
                        "UPDATE devices SET attributes = %s::jsonb WHERE key = %s", (json.dumps(attrs), d.key)
                    )
        clock = SimClock(factor=FACTOR, start=START)
        seen: list[float] = []
        async with serve_fleet(scenario, base_port=0, clock=clock) as fleet:
            config = gateway_config(scenario, fleet.endpoints, name=f"bench-dr-{run_id}")
            kinds = {d.key: d.kind for d in scenario.devices}
            devices = [
                d if kinds[d.key] in DR_KINDS else d.model_copy(update={"poll_interval_s": 10.0})
                for d in config.devices
            ]
            config = config.model_copy(update={"devices": devices})
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(run_ingest(settings)),
                    tg.create_task(run_gateway(settings, config)),
                    tg.create_task(_first_command(settings, seen)),
                    tg.create_task(
                        run_dr_controller(
                            settings, name="bench", clock=clock, tuning=LoopTuning(max_age_s=15.0)
                        )
                    ),
                ]
                try:
                    now = clock.now() + timedelta(minutes=16)  # time to fill 15 minutes of meter-before
                    epoch = now.timestamp()
                    starts_at = datetime.fromtimestamp(epoch - epoch % 900 + 900, UTC)
                    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                        cur = await conn.execute(
                            EVENT_SQL,
                            (TARGET_KW, starts_at, starts_at + timedelta(minutes=MINUTES)),
                        )
                        row = await cur.fetchone()
                        assert row is not None
                    end = starts_at + timedelta(minutes=MINUTES)
                    await asyncio.sleep((end - clock.now()).total_seconds() / FACTOR + 3)
                    return await _figures(dsn, int(row[0]), starts_at, seen)
                finally:
                    for task in tasks:
                        task.cancel()
    finally:
        with contextlib.suppress(psycopg.Error):
            async with await psycopg.AsyncConnection.connect(
                db.with_database(SERVER_DSN, "postgres"), autocommit=True
            ) as conn:
                await conn.execute(f'DROP DATABASE IF EXISTS "lishui_bench_dr_{run_id}" WITH (FORCE)')
    raise AssertionError("unreachable")
