"""Ingest end to end on the real Mosquitto and TimescaleDB: publish, and look in the database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg
import pytest
from prometheus_client import REGISTRY

from core import mqtt as core_mqtt
from core import registry
from core.payloads import DeviceState, Sample, Status, TelemetryBatch, encode
from core.settings import Settings
from core.topics import Channel, topic
from ingest.service import IngestService


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _invalid(reason: str) -> float:
    return REGISTRY.get_sample_value("lishui_ingest_invalid_total", {"reason": reason}) or 0.0


@pytest.fixture
def ingest_settings(settings: Settings) -> Settings:
    # A share group per test: Mosquitto keeps queueing a stopped member's share of the messages for its
    # persistent session, so a group must never outlive the test that stopped its members.
    fast = settings.ingest.model_copy(
        update={
            "batch_max_delay_s": 0.05,
            "rollup_interval_s": 0.3,
            "rollup_grace_s": 0.5,
            "share_group": _key("g"),
        }
    )
    return settings.model_copy(update={"ingest": fast})


@contextlib.asynccontextmanager
async def running(settings: Settings, client_id: str, *, forget: bool = True) -> AsyncIterator[IngestService]:
    """Run an ingest service; afterwards its broker session is discarded unless ``forget=False``."""
    service = IngestService(settings, client_id=client_id, session_expiry_s=120, drain_timeout_s=5)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(10):
            await service.ready.wait()
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if forget:
            async with aiomqtt.Client(
                settings.mqtt.host, settings.mqtt.port, identifier=client_id, clean_session=True
            ):
                pass


@pytest.fixture
async def publisher(ingest_settings: Settings) -> AsyncIterator[aiomqtt.Client]:
    async with core_mqtt.client(ingest_settings.mqtt, _key("test-pub")) as client:
        yield client


def _batch(seq: int, start: datetime, n: int, **extra: float) -> bytes:
    samples = [
        Sample(
            ts=start + timedelta(seconds=i),
            values={"active_power_w": 1000.0 + i, "voltage_v": 230.0, **extra},
        )
        for i in range(n)
    ]
    return encode(TelemetryBatch(seq=seq, samples=samples))


async def _until(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Poll until ``check`` holds (the caller asserts afterwards, for a readable failure)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:  # polling a database: no event to wait on
        if await check():
            return
        await asyncio.sleep(0.05)


async def _count(dsn: str, sql: str, *args: Any) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, args)
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_telemetry_lands_exactly_once_and_garbage_is_skipped(
    ingest_settings: Settings, publisher: aiomqtt.Client
) -> None:
    root, dsn = ingest_settings.topic_root, ingest_settings.db.dsn
    site, device = _key("site"), _key("pv")
    t = topic(site, device, Channel.TELEMETRY, root=root)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    before = {r: _invalid(r) for r in ("bad_payload", "unknown_metric", "bad_topic")}
    async with running(ingest_settings, _key("ingest")):
        # Garbage first: not JSON, wrong shape, an unknown metric, a topic outside the contract.
        await publisher.publish(t, b"\xff not json", qos=1)
        await publisher.publish(t, b'{"v": 1, "seq": 0, "samples": []}', qos=1)
        await publisher.publish(t, _batch(1, start, 3, no_such_metric=1.0), qos=1)
        await publisher.publish(f"{root}/v1/Not-A-Key/{device}/telemetry", _batch(2, start, 1), qos=1)
        # Then good data, one batch twice (a redelivery).
        good = _batch(3, start + timedelta(seconds=10), 50)
        await publisher.publish(t, good, qos=1)
        await publisher.publish(t, good, qos=1)
        await publisher.publish(t, _batch(4, start + timedelta(seconds=60), 50), qos=1)
        expected = 3 * 2 + 50 * 2 + 50 * 2  # the unknown-metric batch keeps its known readings
        sql = "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.key = %s"

        async def landed() -> bool:
            return await _count(dsn, sql, device) >= expected

        await _until(landed)
        await asyncio.sleep(0.3)  # the duplicate must not add anything, even late
        assert await _count(dsn, sql, device) == expected
        assert _invalid("bad_payload") - before["bad_payload"] == 2
        assert _invalid("unknown_metric") - before["unknown_metric"] == 3
        assert _invalid("bad_topic") - before["bad_topic"] == 1
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT lifecycle, last_seen FROM devices WHERE key = %s", (device,))
            lifecycle, last_seen = await cur.fetchone()  # type: ignore[misc]
            assert lifecycle == "discovered"
            assert last_seen == start + timedelta(seconds=60 + 49)
        # The periodic refresh rolls the data up.
        rolled = (
            "SELECT coalesce(sum(r.n), 0) FROM telemetry_1m r JOIN devices d ON d.id = r.device_id"
            " WHERE d.key = %s"
        )

        async def rolled_up() -> bool:
            return await _count(dsn, rolled, device) == expected

        await _until(rolled_up)
        assert await _count(dsn, rolled, device) == expected


async def test_status_conflict_and_redelivery_after_restart(
    ingest_settings: Settings, publisher: aiomqtt.Client
) -> None:
    root, dsn = ingest_settings.topic_root, ingest_settings.db.dsn
    site, other_site, device = _key("site"), _key("site"), _key("meter")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await registry.upsert_site(conn, site, "Site", None, "mengxi")
        await registry.upsert_device(conn, device, site, "meter")
    status = Status(state=DeviceState.FAULT, reason="modbus exception 4", ts=datetime.now(UTC))
    await publisher.publish(
        topic(site, device, Channel.STATUS, root=root), encode(status), qos=1, retain=True
    )
    conflicts_before = _invalid("device_conflict")
    client_id = _key("ingest")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    sql = "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.key = %s"
    try:
        async with running(ingest_settings, client_id, forget=False):
            # The retained status arrives on subscription.

            async def faulted() -> bool:
                return bool(
                    await _count(
                        dsn, "SELECT count(*) FROM devices WHERE key = %s AND status = 'fault'", device
                    )
                )

            await _until(faulted)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    "SELECT status, status_reason FROM devices WHERE key = %s", (device,)
                )
                assert await cur.fetchone() == ("fault", "modbus exception 4")
            # The same device key under another site is a conflict: rejected and counted.
            await publisher.publish(
                topic(other_site, device, Channel.TELEMETRY, root=root), _batch(1, start, 5), qos=1
            )

            async def rejected() -> bool:
                return _invalid("device_conflict") > conflicts_before

            await _until(rejected)
            assert _invalid("device_conflict") - conflicts_before == 1
        # Ingest is down: the persistent session holds what is published meanwhile.
        await publisher.publish(
            topic(site, device, Channel.TELEMETRY, root=root), _batch(2, start, 20), qos=1
        )
        async with running(ingest_settings, client_id):

            async def redelivered() -> bool:
                return await _count(dsn, sql, device) >= 40

            await _until(redelivered)
        assert await _count(dsn, sql, device) == 40
    finally:
        await publisher.publish(topic(site, device, Channel.STATUS, root=root), b"", qos=1, retain=True)
