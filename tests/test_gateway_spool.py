"""The gateway's disk spool (gateway.spool): order, acknowledgement, crash recovery, seq, size bound."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.payloads import Sample, TelemetryBatch, decode_telemetry, encode_telemetry
from gateway.outbox import Outbound
from gateway.spool import HEADER, MAGIC, Spool, SpoolLocked


def telemetry(device: str, seq: int) -> Outbound:
    payload = json.dumps({"v": 1, "seq": seq, "samples": []}).encode()
    return Outbound(f"root/v1/site/{device}/telemetry", payload)


async def take(spool: Spool, n: int) -> list[Outbound]:
    async with asyncio.timeout(5):
        return [await spool.get() for _ in range(n)]


async def nothing_ready(spool: Spool) -> bool:
    try:
        async with asyncio.timeout(0.2):
            await spool.get()
    except TimeoutError:
        return True
    return False


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def size_of(path: Path) -> int:
    return path.stat().st_size


def read(path: Path) -> bytes:
    return path.read_bytes()


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def seqs(messages: list[Outbound]) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in messages]


async def test_append_publish_ack_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    for i in range(10):
        spool.put(telemetry("d1", i))
    assert len(spool) == 10
    got = await take(spool, 10)
    assert seqs(got) == list(range(10))
    assert [m.ref for m in got] == list(range(10))
    for m in reversed(got):  # PUBACKs may come back in any order
        spool.done(m)
    assert len(spool) == 0
    async with asyncio.timeout(1):
        await spool.drained()
    spool.close()


async def test_nothing_is_published_before_it_is_fsynced(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=3600)
    spool.put(telemetry("d1", 0))
    assert await nothing_ready(spool)
    await spool.flush()
    assert seqs(await take(spool, 1)) == [0]
    spool.close()


async def test_put_back_goes_out_first_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    for i in range(6):
        spool.put(telemetry("d1", i))
    first = await take(spool, 4)
    spool.done(first[0])
    spool.put_back(first[3])  # the connection went away: in-flight messages come back
    spool.put_back(first[1])
    spool.put_back(first[2])
    spool.put(telemetry("d1", 6))
    await spool.flush()
    assert seqs(await take(spool, 6)) == [1, 2, 3, 4, 5, 6]
    spool.close()


async def test_retained_latest_wins_and_is_not_spooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    spool.put(Outbound("root/v1/s/d/status", b"online", retain=True))
    spool.put(Outbound("root/v1/s/d/status", b"offline", retain=True))
    got = await take(spool, 1)
    assert got[0].payload == b"offline" and got[0].retain
    assert await nothing_ready(spool)
    spool.done(got[0])
    spool.close()
    assert Spool(tmp_path).next_seq("root/v1/s/d/status") == 0


async def test_restart_replays_unacknowledged_in_order_then_new_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    for i in range(5):
        spool.put(telemetry("d1", i))
    got = await take(spool, 3)
    spool.done(got[0])
    spool.done(got[2])  # 1 is unacknowledged, 2 is acknowledged out of order
    spool.close()

    again = Spool(tmp_path, fsync_interval_s=0.01)
    assert again.replayed == 4  # everything from the first unacknowledged id on
    assert again.next_seq("root/v1/site/d1/telemetry") == 5
    again.put(telemetry("d1", 5))
    await again.flush()
    assert seqs(await take(again, 5)) == [1, 2, 3, 4, 5]
    again.close()


async def test_crash_recovery_truncates_a_torn_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    for i in range(5):
        spool.put(telemetry("d1", i))
    await spool.flush()
    # A crash: nothing closed, the last record only half on disk.
    (segment,) = segments(tmp_path)
    size = size_of(segment)
    record = len(telemetry("d1", 4).payload) + len(telemetry("d1", 4).topic) + 2 + HEADER.size
    os.truncate(segment, size - record // 2)
    os.close(spool._lock_fd)  # the dead process's lock goes with it

    recovered = Spool(tmp_path, fsync_interval_s=0.01)
    assert recovered.truncated == 1
    assert recovered.next_seq("root/v1/site/d1/telemetry") == 4  # seq 4 was never published
    assert seqs(await take(recovered, 4)) == [0, 1, 2, 3]
    recovered.put(telemetry("d1", 4))
    await recovered.flush()
    assert seqs(await take(recovered, 1)) == [4]
    recovered.close()


async def test_corrupt_record_is_cut_not_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    for i in range(3):
        spool.put(telemetry("d1", i))
    spool.close()
    (segment,) = segments(tmp_path)
    data = bytearray(read(segment))
    data[-3] ^= 0xFF  # a flipped byte in the last record's payload
    write(segment, bytes(data))
    recovered = Spool(tmp_path, fsync_interval_s=0.01)
    assert recovered.truncated == 1
    assert seqs(await take(recovered, 2)) == [0, 1]
    assert await nothing_ready(recovered)
    recovered.close()


async def test_seq_survives_restart_after_segments_are_deleted(tmp_path: Path) -> None:
    topic = "root/v1/site/d1/telemetry"
    spool = Spool(tmp_path, segment_bytes=4096, fsync_interval_s=0.01)
    next_seq = {"n": 0}
    spool.watch_seqs(lambda: {topic: next_seq["n"]})
    for i in range(200):
        spool.put(telemetry("d1", i))
        next_seq["n"] = i + 1
    assert len(segments(tmp_path)) > 3
    for m in await take(spool, 200):
        spool.done(m)
    assert len(segments(tmp_path)) == 1  # only the active segment is left
    os.close(spool._lock_fd)  # killed: no clean close, no final index

    again = Spool(tmp_path, fsync_interval_s=0.01)
    assert again.next_seq(topic) >= 200
    assert again.replayed <= 200 - 100  # what the index says was acknowledged is not sent again
    again.close()


async def test_size_bound_drops_the_oldest_segment_and_counts_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024, fsync_interval_s=0.01)
    for i in range(2000):
        spool.put(telemetry("d1", i))
    total = sum(size_of(p) for p in segments(tmp_path))
    assert total <= 64 * 1024
    assert spool.dropped > 0
    assert len(spool) == 2000 - spool.dropped
    await spool.flush()
    got = seqs(await take(spool, len(spool)))
    assert got == list(range(spool.dropped, 2000))  # the newest survive, still in order
    spool.close()


async def test_two_processes_never_share_a_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


async def test_segments_start_with_magic(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put(telemetry("d1", 0))
    spool.close()
    (segment,) = segments(tmp_path)
    assert read(segment).startswith(MAGIC)


async def test_seq_of_binary_telemetry_survives_a_crash(tmp_path: Path) -> None:
    """With the binary encoding (LISHUI_GATEWAY__TELEMETRY_ENCODING=binary) the spool still finds the last
    seq it wrote, so a gateway killed before any index was saved never issues a seq twice."""
    topic = "root/v1/site/d1/telemetry"
    ts = datetime(2026, 6, 21, 4, 0, tzinfo=UTC)
    spool = Spool(tmp_path, fsync_interval_s=0.01)
    for i in range(7):
        batch = TelemetryBatch(seq=i, samples=[Sample(ts=ts, values={"active_power_w": float(i)})])
        spool.put(Outbound(topic, encode_telemetry(batch, "binary")))
    await spool.flush()
    os.close(spool._lock_fd)  # killed: no clean close, no index

    again = Spool(tmp_path, fsync_interval_s=0.01)
    assert again.next_seq(topic) == 7
    replayed = await take(again, 7)
    assert [decode_telemetry(m.payload).seq for m in replayed] == list(range(7))
    again.close()
