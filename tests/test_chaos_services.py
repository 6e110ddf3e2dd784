"""Chaos on real services (issue 3): while a fleet streams, the broker restarts, the database is away
for 30 s, ingest is killed mid-batch, the gateway is killed. After each, every reading the gateway
produced is in the hypertable exactly once (see tests/chaos_harness.py for the ground truth).

Each stack runs on a Mosquitto of its own, and the database scenario on a PostgreSQL cluster of its own,
so stopping them disturbs no other test; they still run last (tests/conftest.py), being slow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chaos_harness import (
    Cluster,
    eventually,
    finish,
    out_of_order,
    require_mosquitto,
    require_postgres_binaries,
    streaming,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


@pytest.fixture
def services() -> None:
    require_mosquitto()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A PostgreSQL of the test's own (migrated database ``lishui``), removed afterwards."""
    require_mosquitto()
    require_postgres_binaries()
    cluster = Cluster()
    try:
        await cluster.create()
        yield cluster
    finally:
        await cluster.destroy()


def report(name: str, counts: dict[str, int], timings: dict[str, float]) -> None:
    print(f"\nchaos {name}: {counts} timings={timings}")


async def test_broker_restart_loses_nothing(services: None, db_dsn: str, tmp_path: Path) -> None:
    """One ingest on a plain subscription (the configuration for one ingest per Mosquitto): its
    persistent session, and the QoS 1 messages queued for it, survive the broker's restart. (With a
    shared subscription Mosquitto 2.0.11 drops what is published after the restart until the member
    subscribes again.) The gateway spools while the broker is away and replays, in order."""
    async with streaming("broker", db_dsn, tmp_path, shared=False) as stack:
        poll_s = 0.25
        t0 = time.monotonic()
        down_from = datetime.now(UTC)
        try:
            await stack.broker.stop()
            await asyncio.sleep(3)  # the gateway spools, ingest and the recorder are cut off
            down_until = datetime.now(UTC)
        finally:
            await stack.broker.start()
        stack.timings["broker_down_s"] = round(time.monotonic() - t0, 1)
        await stack.flowing(within=60)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
        assert stack.recorder.connects >= 2, "the recorder should have been cut off and come back"
        recorded = stack.recorder.snapshot()
        assert not out_of_order(recorded), f"replayed out of order: {out_of_order(recorded)}"
        # Polled while the broker was away, so spooled by the gateway and published after the restart
        # (each of them is in the database: finish() checked every recorded reading).
        during = {
            (b.device, b.seq) for b in recorded if any(down_from < ts < down_until for ts, _ in b.readings)
        }
        expected = len(stack.devices) * 3 / poll_s
        assert len(during) >= expected / 2, f"{len(during)} batches from the outage, expected ~{expected:.0f}"
        counts["batches_from_outage"] = len(during)
    report("broker restart", counts, stack.timings)


async def test_database_away_30s_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """Ingest spills to disk once writes have failed for 2 s (acknowledging what is fsynced, so the broker's
    queue drains); it is killed (-9) while it holds a spill and started again; when the database is back
    the spill is replayed and every reading is in the hypertable exactly once."""
    spill_dir = tmp_path / "ingest-spill"
    spill = {"LISHUI_INGEST__SPILL_DIR": str(spill_dir), "LISHUI_INGEST__SPILL_AFTER_S": "2"}
    async with streaming("database", cluster.dsn, tmp_path, env_extra=spill) as stack:
        t0 = time.monotonic()

        def segments() -> list[Path]:
            return list(spill_dir.glob("*/seg-*.log"))

        try:
            await cluster.stop()
            rows_before = stack.recorder.count()
            await eventually(lambda: bool(segments()), 20, "ingest to spill")
            await asyncio.sleep(max(0.0, 15 - (time.monotonic() - t0)))
            stack.ingest.kill9()  # holding a spill: it is found and replayed at the next start
            stack.ingest.start()
            await asyncio.sleep(max(0.0, 30 - (time.monotonic() - t0)))
            assert stack.recorder.count() > rows_before, "the stream goes on while the database is away"
            assert segments(), "the spill is held while the database is away"
        finally:
            await cluster.start()
        stack.timings["db_down_s"] = round(time.monotonic() - t0, 1)
        await stack.flowing(within=90)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        await eventually(lambda: not segments(), 60, "the spill to be replayed")
        stack.timings["spill_replayed_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
        log_text = (tmp_path / "ingest.log").read_text(errors="replace")
        assert "spill found at start" in log_text and "spill segment replayed" in log_text
        counts["spill_segments_replayed"] = log_text.count("spill segment replayed")
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
    # The gateway publishes the binary encoding here: its spool must find its seqs in it after kill -9.
    async with streaming("gateway", db_dsn, tmp_path, encoding="binary") as stack:
        t0 = time.monotonic()
        await asyncio.sleep(1)
        stack.gateway.kill9()
        await asyncio.sleep(2)
        stack.gateway.start()  # same name, same state dir: the spool replays, seqs continue
        await stack.flowing(within=60)
        stack.timings["recovered_s"] = round(time.monotonic() - t0, 1)
        counts = await finish(stack)
        recorded = stack.recorder.snapshot()
        assert not out_of_order(recorded), f"replayed out of order: {out_of_order(recorded)}"
    report("gateway kill -9", counts, stack.timings)
