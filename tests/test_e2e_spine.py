"""The telemetry spine end to end, on real parts: Modbus simulators → gateway → Mosquitto → ingest →
TimescaleDB → API. The simulators' clock is frozen at a summer noon, so what a simulator holds is a
fixed number the database must show exactly (to the register's resolution)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiomqtt
import httpx
import psycopg
import pytest

from api.app import create_app
from core import db, payloads, topics
from core.settings import Settings
from gateway.service import run_gateway
from ingest.service import run_ingest
from lishui.composition import gateway_config, seed_registry
from simulators.clock import SimClock
from simulators.fleet import Fleet, serve_fleet
from simulators.scenario import load_scenario

NOON = datetime.fromisoformat("2026-06-21T12:00:00+08:00")
# The smallest step each compared metric is encoded with, in the simulators' register images.
TOLERANCE = {
    "active_power_w": 10.0,
    "frequency_hz": 0.011,
    "soc_pct": 0.11,
    "reservoir_level_m": 0.011,
    "voltage_v": 0.11,
    "energy_export_wh": 1000.0,
    "energy_import_wh": 1000.0,
    "rated_power_w": 10.0,
}


@dataclass
class Spine:
    settings: Settings
    fleet: Fleet
    started_at: datetime


@pytest.fixture(scope="module")
async def spine(settings: Settings) -> AsyncIterator[Spine]:
    # A database and topic root of this module's own: other tests register the same scenario keys
    # (some under other sites, in the county scenario) and poll them concurrently.
    own = f"{settings.db.dsn}_e2e"
    await db.ensure_database(own)
    await db.migrate(own)
    settings = settings.model_copy(
        update={"db": settings.db.model_copy(update={"dsn": own}), "topic_root": f"{settings.topic_root}-e2e"}
    )
    scenario = load_scenario("default")
    await seed_registry(settings, scenario)
    base_port = random.randint(21000, 29000)
    started_at = datetime.now(UTC)
    async with serve_fleet(scenario, base_port=base_port, clock=SimClock(factor=0, start=NOON)) as fleet:
        config = gateway_config(scenario, fleet.endpoints, name=f"e2e-{uuid.uuid4().hex[:6]}")
        async with asyncio.TaskGroup() as tg:
            services = [
                tg.create_task(run_ingest(settings), name="ingest"),
                tg.create_task(run_gateway(settings, config), name="gateway"),
            ]
            try:
                yield Spine(settings, fleet, started_at)
            finally:
                for task in services:
                    task.cancel()


async def _latest(
    conn: psycopg.AsyncConnection, device: str, metric: str, since: datetime
) -> tuple[datetime, float] | None:
    # Only this module's readings: other tests of the run poll the same scenario's devices.
    cur = await conn.execute(
        "SELECT t.ts, t.value FROM telemetry t JOIN devices d ON d.id = t.device_id"
        " JOIN metrics m ON m.id = t.metric_id WHERE d.key = %s AND m.name = %s AND t.ts >= %s"
        " ORDER BY t.ts DESC LIMIT 1",
        (device, metric, since),
    )
    return await cur.fetchone()  # type: ignore[return-value]


async def _eventually(check, within: float = 30.0, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


async def test_every_device_reports_scaled_values_with_correct_timestamps(spine: Spine) -> None:
    db_dsn = spine.settings.db.dsn
    expected = {
        key: {m: dev.value(m) for m in TOLERANCE if _has(dev, m)} for key, dev in spine.fleet.devices.items()
    }
    assert all(expected.values()), "every simulated device should expose some compared metrics"
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        for key, metrics in expected.items():
            for metric, want in metrics.items():
                row = await _eventually(lambda k=key, m=metric: _latest(conn, k, m, spine.started_at))
                ts, got = row
                # A multi-MW meter holds W in a 16-bit register: its resolution may be coarser than ours.
                step = max(TOLERANCE[metric], spine.fleet.device(key).resolution(metric) / 2 + 1e-6)
                assert abs(got - want) <= step, (key, metric, got, want)
                assert spine.started_at <= ts <= datetime.now(UTC), (key, metric, ts)


def _has(device, metric: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        device.value(metric)
    except KeyError:
        return False
    return True


@contextlib.asynccontextmanager
async def _mqtt(settings: Settings) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        settings.mqtt.host, settings.mqtt.port, identifier=f"e2e-{uuid.uuid4().hex[:8]}"
    ) as client:
        yield client


async def _command(
    settings: Settings, site: str, device: str, cmd: payloads.Command
) -> payloads.CommandResult:
    async with _mqtt(settings) as client:
        result_topic = topics.topic(site, device, topics.Channel.CMD_RESULT, settings.topic_root)
        await client.subscribe(result_topic, qos=1)
        await client.publish(
            topics.topic(site, device, topics.Channel.CMD, settings.topic_root), payloads.encode(cmd), qos=1
        )
        async with asyncio.timeout(15):
            async for message in client.messages:
                result = payloads.decode(payloads.CommandResult, message.payload)  # type: ignore[arg-type]
                if result.id == cmd.id:
                    return result
    raise AssertionError("no result")


def _pv(spine: Spine) -> tuple[str, str]:
    scenario = spine.fleet.scenario
    assert scenario is not None
    pv = next(d for d in scenario.devices if d.kind == "pv_inverter")
    return pv.site, pv.key


async def test_power_limit_command_lowers_pv_output(spine: Spine) -> None:
    site, key = _pv(spine)
    sim = spine.fleet.device(key)
    before = sim.value("active_power_w")
    rated = sim.value("rated_power_w")
    assert before > 0.3 * rated, "a clear summer noon should give a good part of rated power"
    result = await _command(
        spine.settings,
        site,
        key,
        payloads.Command(id=uuid.uuid4().hex, op="set_active_power_limit", args={"pct": 20}, hold_s=600),
    )
    assert result.status == payloads.CommandStatus.ACCEPTED, result
    sim.sync()
    assert sim.value("active_power_w") <= 0.2 * rated + 10
    assert sim.value("active_power_limit_pct") == pytest.approx(20, abs=0.5)
    restore = await _command(
        spine.settings,
        site,
        key,
        payloads.Command(id=uuid.uuid4().hex, op="set_active_power_limit", args={"pct": 100}),
    )
    assert restore.status == payloads.CommandStatus.ACCEPTED


async def test_out_of_range_command_is_rejected_and_nothing_written(spine: Spine) -> None:
    site, key = _pv(spine)
    sim = spine.fleet.device(key)
    limit_before = sim.value("active_power_limit_pct")
    for bad in ({"pct": 150}, {"pct": -1}, {}):
        result = await _command(
            spine.settings,
            site,
            key,
            payloads.Command(id=uuid.uuid4().hex, op="set_active_power_limit", args=bad),
        )
        assert result.status == payloads.CommandStatus.REJECTED, (bad, result)
        assert result.detail
    unknown = await _command(
        spine.settings, site, key, payloads.Command(id=uuid.uuid4().hex, op="self_destruct")
    )
    assert unknown.status == payloads.CommandStatus.REJECTED
    assert sim.value("active_power_limit_pct") == limit_before


async def test_dead_simulator_goes_offline_while_others_keep_flowing(spine: Spine) -> None:
    db_dsn = spine.settings.db.dsn
    scenario = spine.fleet.scenario
    assert scenario is not None
    victim = next(d for d in scenario.devices if d.kind == "hydro")
    others = [d.key for d in scenario.devices if d.key != victim.key]
    status_topic = topics.topic(victim.site, victim.key, topics.Channel.STATUS, spine.settings.topic_root)
    spine.fleet.device(victim.key).pause()
    try:
        async with _mqtt(spine.settings) as client:
            await client.subscribe(status_topic, qos=1)
            async with asyncio.timeout(30):
                async for message in client.messages:
                    status = payloads.decode(payloads.Status, message.payload)  # type: ignore[arg-type]
                    if status.state == payloads.DeviceState.OFFLINE:
                        break
        marker = datetime.now(UTC)
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:

            async def all_others_fresh() -> bool:
                cur = await conn.execute(
                    "SELECT count(DISTINCT d.key) FROM telemetry t JOIN devices d ON d.id = t.device_id"
                    " WHERE d.key = ANY(%s) AND t.ts > %s",
                    (others, marker),
                )
                row = await cur.fetchone()
                return bool(row and row[0] == len(others))

            await _eventually(all_others_fresh, within=20)

            async def recorded_offline() -> bool:
                cur = await conn.execute("SELECT status FROM devices WHERE key = %s", (victim.key,))
                row = await cur.fetchone()
                return bool(row and row[0] == "offline")

            await _eventually(recorded_offline, within=20)
    finally:
        spine.fleet.device(victim.key).resume()


async def test_garbage_on_a_telemetry_topic_does_not_stop_ingest(spine: Spine) -> None:
    db_dsn = spine.settings.db.dsn
    site, key = _pv(spine)
    topic = topics.topic(site, key, topics.Channel.TELEMETRY, spine.settings.topic_root)
    async with _mqtt(spine.settings) as client:
        for junk in (b"\x00\xff", b"{}", json.dumps({"seq": 1, "samples": [{"ts": "yesterday"}]}).encode()):
            await client.publish(topic, junk, qos=1)
    marker = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:

        async def fresh() -> bool:
            cur = await conn.execute(
                "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id"
                " WHERE d.key = %s AND t.ts > %s",
                (key, marker),
            )
            row = await cur.fetchone()
            return bool(row and row[0] > 0)

        await _eventually(fresh, within=20)


async def test_api_serves_live_values_of_every_device(spine: Spine) -> None:
    app = create_app(spine.settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lishui") as http:
            for key in spine.fleet.devices:

                async def has_values(k: str = key) -> bool:
                    r = await http.get(f"/api/v1/devices/{k}/latest")
                    return r.status_code == 200 and bool(r.json())

                await _eventually(has_values, within=20)
            assert (await http.get("/api/v1/devices/no-such-device/latest")).status_code == 404
