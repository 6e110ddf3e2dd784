"""Ingest's disk spill (ingest.spill): the format's recovery and bound, and, on the real broker, a database
that is away: messages are spilled and acknowledged, then written exactly once when it is back, even
when the spill is replayed twice (a crash mid-replay)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY

from core import mqtt as core_mqtt
from core.payloads import Sample, TelemetryBatch, encode
from core.settings import Settings
from core.topics import Channel, topic
from ingest.service import IngestService
from ingest.spill import Spill, SpillLocked

UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/lishui"  # (nothing listens on port 1)


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _until(check: Callable[[], Awaitable[bool] | bool], within_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.05)


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def _tear(segment: Path) -> None:
    """Half a record at the end, as a crash mid-append leaves it."""
    with open(segment, "ab") as f:
        f.write(b"\x10\x00\x00\x00torn")


# -- the spill on its own -----------------------------------------------------------------------------


async def test_spill_survives_a_torn_tail_and_refuses_past_its_bound(tmp_path: Path) -> None:
    spill = Spill(tmp_path, max_bytes=64 * 1024, segment_bytes=4096)
    with pytest.raises(SpillLocked):
        Spill(tmp_path, max_bytes=64 * 1024)
    for i in range(30):
        assert await spill.append([(f"t/{i}", bytes(200)), (f"t/{i}", b"second")])
    assert spill.messages == 60
    assert not await spill.append([("t/big", bytes(64 * 1024))])  # past the bound: refused, not dropped
    assert spill.messages == 60
    spill.close()
    _tear(_segments(tmp_path)[-1])  # a crash mid-append
    spill = Spill(tmp_path, max_bytes=64 * 1024, segment_bytes=4096)
    assert spill.messages == 60
    got: list[tuple[str, bytes]] = []
    while spill:
        segment, records = await spill.oldest()
        got += records
        await spill.release(segment)
    assert got == [(f"t/{i}", p) for i in range(30) for p in (bytes(200), b"second")]
    assert not _segments(tmp_path)
    spill.close()


# -- with the real broker and a database that is away ---------------------------------------------------


@contextlib.asynccontextmanager
async def running(settings: Settings, client_id: str) -> AsyncIterator[IngestService]:
    service = IngestService(settings, client_id=client_id, session_expiry_s=120, drain_timeout_s=2)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(10):
            await service.ready.wait()
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _batch(seq: int, start: datetime, n: int) -> bytes:
    samples = [Sample(ts=start + timedelta(seconds=i), values={"active_power_w": float(i)}) for i in range(n)]
    return encode(TelemetryBatch(seq=seq, samples=samples))


async def _rows(dsn: str, device: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.key = %s",
            (device,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_database_away_spills_acknowledges_and_catches_up_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    cfg = settings.ingest.model_copy(
        update={
            "batch_max_delay_s": 0.05,
            "batch_max_rows": 200,
            "share_group": _key("g"),
            "spill_dir": str(tmp_path / "spill"),
            "spill_after_s": 0.5,
        }
    )
    # A topic root of its own: retained statuses of earlier tests' devices would be spilled too.
    live = settings.model_copy(update={"ingest": cfg, "topic_root": _key("spill")})
    away = live.model_copy(update={"db": live.db.model_copy(update={"dsn": UNREACHABLE_DSN})})
    client_id = _key("spill-ingest")
    site, device = _key("site"), _key("pv")
    t = topic(site, device, Channel.TELEMETRY, root=live.topic_root)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    messages, per_message = 40, 25
    spilled0 = _metric("lishui_ingest_spilled_messages_total")
    spill_dir = tmp_path / "spill" / client_id

    # The database is away: ingest spills, and acknowledges what is on disk.
    async with running(away, client_id), core_mqtt.client(live.mqtt, _key("pub")) as pub:
        for seq in range(messages):
            await pub.publish(t, _batch(seq, start + timedelta(minutes=seq), per_message), qos=1)
        await _until(lambda: _metric("lishui_ingest_spilled_messages_total") - spilled0 >= messages)
        assert _metric("lishui_ingest_spilled_messages_total") - spilled0 == messages
        assert _metric("lishui_ingest_spill_messages") >= messages
        assert _metric("lishui_ingest_lag_seconds") < 10  # nothing held in memory for long
    assert _segments(spill_dir)
    saved = tmp_path / "saved"
    shutil.copytree(spill_dir, saved, ignore=shutil.ignore_patterns("lock"))

    # Back: the spill is replayed; the broker redelivers nothing (every message was acknowledged).
    replayed0 = _metric("lishui_ingest_replayed_messages_total")
    duplicates0 = _metric("lishui_ingest_rows_duplicate_total")
    async with running(live, client_id):
        await _until(lambda: _metric("lishui_ingest_replayed_messages_total") - replayed0 >= messages)
        assert await _rows(live.db.dsn, device) == messages * per_message
        assert _metric("lishui_ingest_replayed_messages_total") - replayed0 == messages
        assert _metric("lishui_ingest_rows_duplicate_total") == duplicates0
        assert _metric("lishui_ingest_spill_messages") == 0
    assert not _segments(spill_dir)

    # A crash mid-replay leaves the segments: replaying them again writes nothing twice.
    for segment in _segments(saved):
        shutil.copy(segment, spill_dir / segment.name)
    async with running(live, client_id):
        await _until(lambda: not _segments(spill_dir))
        assert not _segments(spill_dir)
    assert await _rows(live.db.dsn, device) == messages * per_message
    assert _metric("lishui_ingest_rows_duplicate_total") - duplicates0 == messages * per_message

    async with core_mqtt.client(live.mqtt, client_id):  # (a clean session: the broker forgets ours)
        pass
