"""Chaos on real services (issue 3): while a fleet streams, the broker restarts, the database is away
for 30 s, ingest is killed mid-batch, the gateway is killed. After each, every reading the gateway
produced is in the hypertable exactly once (see tests/chaos_harness.py for the ground truth).

They stop and start the machine's Mosquitto and PostgreSQL, so they run last (tests/conftest.py) and
always bring the services back, in ``finally`` blocks, before the next test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chaos_harness import (
    eventually,
    finish,
    require_services,
    start_mosquitto,
    start_postgres,
    stop_mosquitto,
    stop_postgres,
    streaming,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


@pytest.fixture
async def services(db_dsn: str) -> AsyncIterator[None]:
    """Root and the service commands, or skip; whatever happens, both services run afterwards."""
    require_services()
    try:
        yield
    finally:
        await start_mosquitto()
        await start_postgres(db_dsn)


def report(name: str, counts: dict[str, int], timings: dict[str, float]) -> None:
    print(f"\nchaos {name}: {counts} timings={timings}")


@pytest.mark.xfail(
    reason="Mosquitto 2.0.11 drops messages published after a restart for an offline persistent member of a "
    "shared subscription (reproduced without Lishui code); a plain subscription keeps them. Open: ingest's "
    "plain-subscription mode for single-instance Mosquitto deployments.",
    strict=False,
)
async def test_broker_restart_loses_nothing(services: None, db_dsn: str, tmp_path: Path) -> None:
    async with streaming("broker", db_dsn, tmp_path) as stack:
        t0 = time.monotonic()
        try:
            await stop_mosquitto()
            await asyncio.sleep(3)  # the gateway spools, ingest and the recorder are cut off
        finally:
            await start_mosquitto()
        stack.timings["broker_down_s"] = round(time.monotonic() - t0, 1)
        await stack.flowing(within=60)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
        assert stack.recorder.connects >= 2, "the recorder should have been cut off and come back"
    report("broker restart", counts, stack.timings)


async def test_database_away_30s_loses_nothing(services: None, db_dsn: str, tmp_path: Path) -> None:
    async with streaming("database", db_dsn, tmp_path) as stack:
        t0 = time.monotonic()
        try:
            await stop_postgres()
            rows_before = stack.recorder.count()
            await asyncio.sleep(30)
            assert stack.recorder.count() > rows_before, "the stream goes on while the database is away"
        finally:
            await start_postgres(db_dsn)
        stack.timings["db_down_s"] = round(time.monotonic() - t0, 1)
        await stack.flowing(within=90)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
    report("database away 30 s", counts, stack.timings)


async def test_ingest_killed_mid_batch_loses_nothing(services: None, db_dsn: str, tmp_path: Path) -> None:
    async with streaming("ingest", db_dsn, tmp_path) as stack:
        t0 = time.monotonic()
        # Mid-batch: right after a commit, with the next batch being collected and written.
        rows = await stack.db_count()

        async def committed() -> bool:
            return await stack.db_count() != rows

        await eventually(committed, 10, "a commit", interval=0.05)
        await asyncio.sleep(0.15)
        stack.ingest.kill9()
        await asyncio.sleep(2)  # the stream goes on; the broker queues for ingest's session
        stack.ingest.start()  # same client id: the session and its queued share are still there
        await stack.flowing(within=60)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
    report("ingest kill -9", counts, stack.timings)


async def test_gateway_killed_and_restarted_loses_nothing(
    services: None, db_dsn: str, tmp_path: Path
) -> None:
    async with streaming("gateway", db_dsn, tmp_path) as stack:
        t0 = time.monotonic()
        await asyncio.sleep(1)
        stack.gateway.kill9()
        await asyncio.sleep(2)
        stack.gateway.start()  # same name, same state dir: the spool replays, seqs continue
        await stack.flowing(within=60)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
    report("gateway kill -9", counts, stack.timings)
