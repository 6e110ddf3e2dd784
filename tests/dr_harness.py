"""Scaffolding shared by the demand-response tests: settings for a fast control loop, waiting for a
fleet's telemetry, a spy on the command topics, the simulated devices still under command, the grid's
response recomputed from raw telemetry, the simulated clock's 15-minute grid, an event row for the
controller's unit tests, and database fixtures (history written straight into the 15-minute rollup, a
past event day, a flexible load). Not a test module: imported by them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiomqtt
import numpy as np
import psycopg

from core import registry, topics
from core.dr.baselines import CHINA
from core.settings import DrSettings, IngestSettings, Settings
from simulators.clock import SimClock
from simulators.fleet import Fleet

INTERVAL = timedelta(minutes=15)
Commands = list[tuple[str, str, dict[str, Any]]]  # (site, device, command payload)


def fast_loop_settings(
    settings: Settings, name: str, *, control_interval_s: float = 2.0, hold_s: float = 10.0
) -> Settings:
    """The run's settings with a control loop and ingest fast enough for a simulated hour a minute
    (and no daily forecast run at start-up: seconds of CPU that are not these tests' business), on a
    topic root of the module's own (``name``): an ingest of an earlier module leaves its persistent
    session in the shared subscription behind, and Mosquitto keeps routing that member's share of the
    telemetry to it, so on the run's root a later module's ingest would see only part of its fleet."""
    return settings.model_copy(
        update={
            "topic_root": f"{settings.topic_root}-{name}",
            "dr": DrSettings(
                control_interval_s=control_interval_s,
                hold_s=hold_s,
                command_expiry_s=5.0,
                forecast_daily=False,
            ),
            "ingest": IngestSettings(
                batch_max_delay_s=0.3, client_id=f"{name}-ingest-{uuid.uuid4().hex[:6]}"
            ),
        }
    )


async def wait_live(
    dsn: str, keys: list[str], within: float = 60.0, *, fresh_s: float = 10.0, poll_s: float = 1.0
) -> None:
    """Until every device of ``keys`` has an ``active_power_w`` reading no older than ``fresh_s``."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM devices d WHERE d.key = ANY(%s) AND EXISTS (SELECT 1 FROM telemetry t"
                " WHERE t.device_id = d.id AND t.metric_id = 1"
                " AND t.ts > now() - make_interval(secs => %s))",
                (keys, fresh_s),
            )
            row = await cur.fetchone()
            if row and row[0] == len(keys):
                return
            assert time.monotonic() < deadline, f"only {row} of {len(keys)} devices live"
            await asyncio.sleep(poll_s)


async def record_commands(settings: Settings, commands: Commands) -> None:
    """Until cancelled: append every command published on the run's ``cmd`` topics to ``commands``."""
    async with aiomqtt.Client(
        settings.mqtt.host, settings.mqtt.port, identifier=f"dr-spy-{uuid.uuid4().hex[:8]}"
    ) as client:
        await client.subscribe(topics.subscription(topics.Channel.CMD, settings.topic_root), qos=1)
        async for message in client.messages:
            address = topics.parse(str(message.topic), settings.topic_root)
            assert isinstance(message.payload, bytes)
            commands.append((address.site, address.device, json.loads(message.payload)))


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    """``check()``'s first true result, polled every 0.25 s; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.25)


def limited(fleet: Fleet, keys: Iterable[str], hydro_initial_w: Mapping[str, float]) -> dict[str, str]:
    """Simulated devices still under a command: a load curtailed or raised, a battery under remote
    control, a hydro unit neither at its own setpoint nor at the profile's default (rated: follow the
    water)."""
    out = {}
    for key in keys:
        dev: Any = fleet.device(key)
        dev.sync()
        if dev.kind == "load" and (dev.physics.setpoint_w or dev.physics.raise_setpoint_w):
            out[key] = f"curtailment {dev.physics.setpoint_w}, raise {dev.physics.raise_setpoint_w}"
        elif dev.kind == "hydro" and dev.physics.setpoint_w not in (
            hydro_initial_w[key],
            dev.physics.p.rated_w,
        ):
            out[key] = f"output setpoint {dev.physics.setpoint_w} of {dev.physics.p.rated_w}"
        elif dev.kind == "battery" and dev.sunspec.get_raw(124, "StorCtl_Mod") not in (0, None):
            out[key] = f"StorCtl_Mod {dev.sunspec.get_raw(124, 'StorCtl_Mod')}"
    return out


def wall_of(clock: SimClock, sim: datetime) -> datetime:
    """The wall time at which the simulated clock shows (showed, will show) ``sim``."""
    return datetime.now(UTC) - (clock.now() - sim) / clock.factor


async def interval_response_from_telemetry(
    conn: psycopg.AsyncConnection,
    clock: SimClock,
    event_id: int,
    starts_at: datetime,
    slots: int,
    *,
    raising: bool = False,
) -> list[float]:
    """The grid's response per interval (kW), recomputed from raw telemetry (interval means per device)
    against the references the controller stored at activation: independent of the controller's own
    sums. Peak shaving: loads draw less, generators give more; ``raising`` (valley filling): loads draw
    more, generators give less, batteries charge."""
    sign = -1 if raising else 1
    response = []
    for i in range(slots):
        lo, hi = wall_of(clock, starts_at + i * INTERVAL), wall_of(clock, starts_at + (i + 1) * INTERVAL)
        cur = await conn.execute(
            "SELECT coalesce(sum(%s * CASE WHEN r.produces THEN a.kw - r.reference_kw"
            "                             ELSE r.reference_kw - a.kw END), 0)"
            " FROM dr_references r JOIN LATERAL (SELECT avg(value) / 1000 AS kw FROM telemetry t"
            "   WHERE t.device_id = r.device_id AND t.metric_id = 1 AND t.ts >= %s AND t.ts < %s) a ON true"
            " WHERE r.event_id = %s AND a.kw IS NOT NULL",
            (sign, lo, hi, event_id),
        )
        row = await cur.fetchone()
        assert row is not None
        response.append(float(row[0]))
    return response


def next_boundary(now: datetime, lead: timedelta) -> datetime:
    """The first 15-minute boundary at or after ``now + lead``."""
    epoch = (now + lead).timestamp()
    return datetime.fromtimestamp(epoch - epoch % 900 + (900 if epoch % 900 else 0), UTC)


async def sim_sleep_until(clock: SimClock, sim: datetime) -> None:
    """Sleep the wall time until the simulated clock shows ``sim``."""
    await asyncio.sleep(max(0.0, (sim - clock.now()).total_seconds() / clock.factor))


def event_row(
    kind: str, target_kw: float, start: datetime, minutes: int = 60, *, event_id: int = 1
) -> dict[str, Any]:
    """An active county event as the controller reads it from ``dr_events`` (meter-before baseline)."""
    return {
        "id": event_id,
        "kind": kind,
        "target_kw": target_kw,
        "starts_at": start,
        "ends_at": start + timedelta(minutes=minutes),
        "notice": "intraday",
        "scope": "county",
        "baseline": "meter_before_15min",
        "state": "active",
    }


async def write_history(conn: psycopg.AsyncConnection, device_id: int, day: date, kw: np.ndarray) -> None:
    """A day of 15-minute rollup rows straight into telemetry_15m (W): what ingest's refresh leaves."""
    start = datetime.combine(day, datetime.min.time(), CHINA)
    async with conn.cursor() as cur:
        async with cur.copy(
            "COPY telemetry_15m (bucket, device_id, metric_id, n, sum, min, max, last, last_ts) FROM STDIN"
        ) as copy:
            for slot, value in enumerate(kw):
                bucket = start + timedelta(minutes=15 * slot)
                w = value * 1000
                await copy.write_row((bucket, device_id, 1, 3, 3 * w, w, w, w, bucket))


async def past_event(conn: psycopg.AsyncConnection, starts_at: datetime, target_kw: float) -> int:
    """A county event of an hour from ``starts_at`` that ran (it has a runtime, restored) and was then
    cancelled: its day is an event day to the baselines and forecasts."""
    cur = await conn.execute(
        "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope)"
        " VALUES ('peak_shaving', %s, %s, %s, 'intraday', 'county') RETURNING id",
        (target_kw, starts_at, starts_at + timedelta(hours=1)),
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(
        "INSERT INTO dr_event_runtime (event_id, baseline_used, controller, activated_at, restored_at)"
        " VALUES (%s, 'meter_before', 'test', %s, %s)",
        (row[0], starts_at, starts_at),
    )
    await conn.execute("UPDATE dr_events SET state = 'cancelled' WHERE id = %s", (row[0],))
    return int(row[0])


async def flex_site(conn: psycopg.AsyncConnection, site: str, town_key: str = "jinluo", tier: int = 4) -> int:
    """A site with one flexible load (1 MW rated, 300 kW floor, at most 400 kW curtailable); its id."""
    await registry.upsert_site(conn, site, "flex park", town_key=town_key, tier=tier)
    return await registry.upsert_device(
        conn,
        f"{site}-load",
        site,
        "load",
        profile="lixian-flexload-v1",
        rated_power_w=1_000_000,
        attributes={"floor_w": 300_000, "max_curtailable_w": 400_000},
    )
