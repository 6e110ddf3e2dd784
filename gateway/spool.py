"""The gateway's durable outbox: telemetry waits on disk until the broker has acknowledged it.

``Spool`` implements ``gateway.outbox.Outbox``. Every non-retained message (telemetry, command results,
events) is appended to the spool *before* it can be published, and is released only when its PUBACK
arrived (``done``). While the broker is away the records pile up on disk; after a reconnect, or after a
restart of the gateway, the unacknowledged records are published again in the order they were written,
oldest first, before anything newer. Retained messages (statuses) are not spooled: the latest one per
topic waits in memory (latest state wins) and the link re-publishes them after every reconnect.

On disk, in ``{state_dir}/{gateway name}/``:

- ``seg-{first record id:020d}.log``: append-only segments, in the format of ``core.spool`` (shared
  with ingest's spill): the magic ``LSPOOL1\\n``, then records, each a header (length, CRC, id) and the
  body ``<u16 topic length><topic utf-8><payload>``. Record ids increase by one across segments. A new
  segment is started past ``segment_bytes``; a segment whose records are all acknowledged is deleted.
- ``index.json`` (replaced atomically): ``acked_below`` (every record id below it is acknowledged) and
  ``next_seq`` (the next telemetry ``seq`` per topic). It is rewritten, and fsynced, before any segment
  is deleted, so a ``seq`` that was ever written is either in a surviving segment or in the index: after
  a restart each device's ``seq`` continues from ``max(index, last spooled seq + 1)``, never reused.
- ``lock``: ``flock``-ed while a gateway uses the directory (two processes never share a spool).

Recovery (at start): every segment is scanned and every record checked (length, id sequence, CRC); the
first bad or torn record ends its segment, which is truncated there (counted in
``lishui_gateway_spool_truncated``). Records below ``acked_below`` are skipped, the rest are replayed.

Durability. Records are written with ``os.write`` straight into the page cache, and fsynced in a worker
thread at most ``fsync_interval_s`` (default 0.1 s) later, one ``fdatasync`` per dirty segment for all
the records written meanwhile. A record is handed to the publisher only once it is fsynced, so nothing
reaches the broker that the disk could lose. Hence:

- a crash of the gateway process (``kill -9``, OOM) loses nothing: the page cache survives it;
- a power cut or kernel crash loses at most the records of the last ``fsync_interval_s`` (plus the one
  fsync in progress). None of them were published, so their ``seq`` numbers may be issued again and no
  consumer ever sees one ``seq`` with two contents. Acknowledgements recorded in ``index.json`` after
  its last fsync may be lost too: those records are published a second time (a duplicate, which ingest's
  primary key ignores), never lost;
- a clean stop fsyncs everything and writes the index.

Bound. Disk use is bounded by ``max_bytes`` (default 1 GiB, ``LISHUI_GATEWAY__SPOOL_MAX_BYTES``; at
a few hundred bytes per batch that is days of a 500-device gateway without a broker). Past it the
*oldest* segment is dropped, acknowledged or not: its unacknowledged records are lost, counted in
``lishui_gateway_spool_dropped`` (and ``lishui_gateway_publish_dropped``) and logged as an error.

Speed: ``put`` is one ``os.write`` of a few hundred bytes and a CRC; reads for publishing come back
from the page cache in chunks (``READ_CHUNK``), with a bounded read-ahead, so memory does not grow with
the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.payloads import telemetry_seq
from core.spool import (
    HEADER,
    MAGIC,
    decode_body,
    encode_record,
    fsync_dir,
    scan,
    segment_first_id,
    segment_name,
)
from gateway import metrics
from gateway.outbox import Outbound

log = logging.getLogger(__name__)

# (The record and segment format lives in core.spool, shared with ingest's spill; MAGIC, HEADER and
# encode_record are re-exported here for the gateway's tests.)
__all__ = ["HEADER", "MAGIC", "Spool", "SpoolLocked", "encode_record"]

READ_CHUNK = 256 * 1024
READ_AHEAD = 512  # records parsed ahead of the publisher
INDEX_EVERY_S = 1.0
TELEMETRY_SUFFIX = "/telemetry"

SeqSource = Callable[[], dict[str, int]]


class SpoolLocked(RuntimeError):
    """Another process holds this spool directory."""


@dataclass(eq=False)
class _Segment:
    first_id: int
    path: Path
    fd: int
    size: int  # bytes written
    durable: int  # bytes known to be fsynced
    last_id: int  # first_id - 1 while empty


class Spool:
    """A durable ``Outbox`` in ``directory`` (created if missing). See the module docstring."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        fsync_interval_s: float = 0.1,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = max(min(segment_bytes, max_bytes // 4), 4096)
        self.fsync_interval_s = fsync_interval_s
        self.dropped = 0  # unacknowledged records dropped by the size bound
        self.truncated = 0  # torn or corrupt tails cut off at recovery
        self.replayed = 0  # unacknowledged records found at recovery
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"spool {self.dir} is in use by another process") from None
        self._segments: list[_Segment] = []
        self._bytes = 0
        self._next_id = 0
        self._acked_below = 0
        self._acked_ahead: set[int] = set()  # acknowledged ids >= _acked_below
        self._in_flight: set[int] = set()
        self._retry: list[tuple[int, Outbound]] = []  # put back: heap by id, published first
        self._buffer: deque[Outbound] = deque()  # read ahead from the cursor
        self._cursor_seg: _Segment | None = None
        self._cursor_off = len(MAGIC)
        self._retained: dict[str, Outbound] = {}
        self._retained_in_flight = 0
        self._seqs: dict[str, int] = {}
        self._seq_source: SeqSource | None = None
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._sync_handle: asyncio.TimerHandle | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._index_lock = threading.Lock()
        self._index_version = 0
        self._index_written_version = 0
        self._index_dirty = False
        self._index_at = 0.0
        self._closed = False
        self._recover()
        self._active = self._new_segment(self._next_id)
        self._changed()

    # -- the Outbox protocol ---------------------------------------------------------------------

    def __len__(self) -> int:
        """Records not yet acknowledged (written, in flight or waiting), plus retained messages waiting."""
        return self._next_id - self._acked_below - len(self._acked_ahead) + len(self._retained)

    def put(self, message: Outbound) -> None:
        if self._closed:
            raise RuntimeError("spool closed")
        if message.retain:
            self._retained.pop(message.topic, None)
            self._retained[message.topic] = message
            self._changed()
            return
        record_id = self._next_id
        record = encode_record(record_id, message.topic, message.payload)
        active = self._active
        if active.size + len(record) > self.segment_bytes and active.last_id >= active.first_id:
            active = self._rotate()
        os.write(active.fd, record)
        active.size += len(record)
        active.last_id = record_id
        self._bytes += len(record)
        self._next_id = record_id + 1
        if self._bytes > self.max_bytes:
            self._enforce_bound()
        self._schedule_sync()
        self._changed()

    def put_back(self, message: Outbound) -> None:
        if message.ref < 0:
            self._retained_in_flight -= 1
            self._retained.setdefault(message.topic, message)  # unless a newer one arrived meanwhile
        else:
            self._in_flight.discard(message.ref)
            if message.ref >= self._acked_below and message.ref not in self._acked_ahead:
                heapq.heappush(self._retry, (message.ref, message))
        self._changed()

    async def get(self) -> Outbound:
        while True:
            message = self._take()
            if message is not None:
                self._changed()
                return message
            self._ready.clear()
            await self._ready.wait()

    def done(self, message: Outbound) -> None:
        if message.ref < 0:
            self._retained_in_flight -= 1
            self._changed()
            return
        ref = message.ref
        self._in_flight.discard(ref)
        if ref >= self._acked_below:
            self._acked_ahead.add(ref)
            if ref == self._acked_below:
                below, ahead = self._acked_below, self._acked_ahead
                while below in ahead:
                    ahead.remove(below)
                    below += 1
                self._acked_below = below
                self._index_dirty = True
                self._release_segments()
        self._changed()

    async def drained(self) -> None:
        await self._idle.wait()

    def next_seq(self, topic: str) -> int:
        """The first telemetry ``seq`` to use on ``topic`` (0 for a topic never spooled)."""
        return self._seqs.get(topic, 0)

    def watch_seqs(self, source: SeqSource) -> None:
        """``source()`` gives each device's next ``seq`` by telemetry topic; saved with the index."""
        self._seq_source = source

    async def flush(self) -> None:
        """Fsync what was written and hand it to the publisher now (tests; shutdown)."""
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
        while self._sync_task is not None and not self._sync_task.done():
            await asyncio.shield(self._sync_task)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync())
        await asyncio.shield(self._sync_task)

    def close(self) -> None:
        """Fsync everything, save the index, release the directory. Unacknowledged records stay."""
        if self._closed:
            return
        self._closed = True
        if self._sync_handle is not None:
            self._sync_handle.cancel()
        for seg in self._segments:
            if seg.durable < seg.size:
                os.fdatasync(seg.fd)
                seg.durable = seg.size
        self._write_index(self._index_snapshot())
        for seg in self._segments:
            os.close(seg.fd)
        self._segments.clear()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    # -- publishing side ---------------------------------------------------------------------------

    def _take(self) -> Outbound | None:
        if self._retained:
            topic = next(iter(self._retained))
            self._retained_in_flight += 1
            return self._retained.pop(topic)
        while self._retry:
            ref, message = heapq.heappop(self._retry)
            if ref >= self._acked_below and ref not in self._acked_ahead:
                self._in_flight.add(ref)
                return message
        if not self._buffer:
            self._fill()
        while self._buffer:
            message = self._buffer.popleft()
            if message.ref >= self._acked_below and message.ref not in self._acked_ahead:
                self._in_flight.add(message.ref)
                return message
        return None

    def _fill(self) -> None:
        """Parse durable records after the cursor into the read-ahead buffer."""
        while len(self._buffer) < READ_AHEAD:
            seg = self._cursor_seg
            if seg is None:
                return
            if self._cursor_off >= seg.durable:
                if seg is self._active or self._cursor_off < seg.size:
                    return  # wait for the next fsync
                self._cursor_seg = self._segment_after(seg)
                self._cursor_off = len(MAGIC)
                continue
            want = min(seg.durable - self._cursor_off, READ_CHUNK)
            data = os.pread(seg.fd, want, self._cursor_off)
            view = memoryview(data)
            pos = 0
            while pos + HEADER.size <= len(data) and len(self._buffer) < READ_AHEAD:
                length, _crc, record_id = HEADER.unpack_from(view, pos)
                end = pos + HEADER.size + length
                if end > len(data):
                    break
                if record_id >= self._acked_below:
                    topic, payload = decode_body(view[pos + HEADER.size : end])
                    self._buffer.append(Outbound(topic, payload, 1, False, record_id))
                pos = end
            if pos == 0:  # one record larger than the chunk
                length = HEADER.unpack_from(view, 0)[0]
                data = os.pread(seg.fd, HEADER.size + length, self._cursor_off)
                view = memoryview(data)
                record_id = HEADER.unpack_from(view, 0)[2]
                if record_id >= self._acked_below:
                    topic, payload = decode_body(view[HEADER.size :])
                    self._buffer.append(Outbound(topic, payload, 1, False, record_id))
                pos = len(data)
            self._cursor_off += pos

    def _segment_after(self, seg: _Segment) -> _Segment | None:
        for i, s in enumerate(self._segments):
            if s is seg:
                return self._segments[i + 1] if i + 1 < len(self._segments) else None
        return self._segments[0] if self._segments else None

    def _changed(self) -> None:
        waiting = len(self)
        metrics.PUBLISH_QUEUE_DEPTH.set(waiting)
        metrics.SPOOL_BYTES.set(self._bytes)
        if waiting or self._in_flight or self._retained_in_flight:
            self._idle.clear()
        else:
            self._idle.set()
        if self._retained or self._retry or self._buffer or self._readable():
            self._ready.set()

    def _readable(self) -> bool:
        seg = self._cursor_seg
        if seg is None:
            return False
        return self._cursor_off < seg.durable or (seg is not self._active and seg.durable >= seg.size)

    # -- segments ----------------------------------------------------------------------------------

    def _new_segment(self, first_id: int) -> _Segment:
        path = self.dir / segment_name(first_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        os.write(fd, MAGIC)
        seg = _Segment(first_id, path, fd, len(MAGIC), 0, first_id - 1)
        self._segments.append(seg)
        self._bytes += len(MAGIC)
        if self._cursor_seg is None:
            self._cursor_seg, self._cursor_off = seg, len(MAGIC)
        return seg

    def _rotate(self) -> _Segment:
        self._active = self._new_segment(self._next_id)
        return self._active

    def _release_segments(self) -> None:
        """Delete the leading segments whose records are all acknowledged (never the active one)."""
        done = 0
        for seg in self._segments:
            if seg is self._active or seg.last_id >= self._acked_below:
                break
            done += 1
        if done:
            self._delete(self._segments[:done])

    def _delete(self, segments: list[_Segment]) -> None:
        # Every seq ever issued must stay findable: save the index before the records go.
        self._write_index(self._index_snapshot())
        for seg in segments:
            self._segments.remove(seg)
            self._bytes -= seg.size
            if self._cursor_seg is seg:
                self._cursor_seg = self._segments[0] if self._segments else None
                self._cursor_off = len(MAGIC)
            os.close(seg.fd)
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()
        fsync_dir(self.dir)

    def _enforce_bound(self) -> None:
        while self._bytes > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments[0]
            if oldest is self._active:
                break
            lost = sum(
                1
                for i in range(max(oldest.first_id, self._acked_below), oldest.last_id + 1)
                if i not in self._acked_ahead
            )
            new_below = max(self._acked_below, oldest.last_id + 1)
            self._acked_ahead = {i for i in self._acked_ahead if i >= new_below}
            self._acked_below = new_below
            self._retry = [r for r in self._retry if r[0] >= new_below]
            heapq.heapify(self._retry)
            self._buffer = deque(m for m in self._buffer if m.ref >= new_below)
            self._delete([oldest])
            if lost:
                self.dropped += lost
                metrics.SPOOL_DROPPED.inc(lost)
                metrics.PUBLISH_DROPPED.inc(lost)
                log.error(
                    "spool full: oldest segment dropped, unpublished telemetry LOST",
                    extra={"records": lost, "max_bytes": self.max_bytes, "spool": str(self.dir)},
                )

    # -- fsync and index ----------------------------------------------------------------------------

    def _schedule_sync(self) -> None:
        if self._sync_handle is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sync_handle = loop.call_later(self.fsync_interval_s, self._start_sync)

    def _start_sync(self) -> None:
        self._sync_handle = None
        if self._closed:
            return
        if self._sync_task is not None and not self._sync_task.done():
            self._schedule_sync()  # one at a time; try again a little later
            return
        self._sync_task = asyncio.get_running_loop().create_task(self._sync(), name="spool-fsync")

    async def _sync(self) -> None:
        targets = [(seg, seg.size, os.dup(seg.fd)) for seg in self._segments if seg.durable < seg.size]
        snapshot = None
        loop = asyncio.get_running_loop()
        if self._index_dirty and loop.time() - self._index_at >= INDEX_EVERY_S:
            snapshot = self._index_snapshot()
            self._index_dirty = False
            self._index_at = loop.time()

        def work() -> None:
            for _seg, _size, fd in targets:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            if snapshot is not None:
                self._write_index(snapshot)

        try:
            await asyncio.to_thread(work)
        except OSError:
            log.exception("spool fsync failed; will retry")
            if not self._closed:
                self._schedule_sync()
            return
        for seg, size, _fd in targets:
            seg.durable = max(seg.durable, size)
        if self._closed:
            return
        if any(seg.durable < seg.size for seg in self._segments) or self._index_dirty:
            self._schedule_sync()
        self._changed()

    def _index_snapshot(self) -> tuple[int, dict[str, object]]:
        seqs = dict(self._seqs)
        if self._seq_source is not None:
            for topic, seq in self._seq_source().items():
                seqs[topic] = max(seq, seqs.get(topic, 0))
        self._seqs = seqs
        self._index_version += 1
        return self._index_version, {"acked_below": self._acked_below, "next_seq": seqs}

    def _write_index(self, snapshot: tuple[int, dict[str, object]]) -> None:
        version, data = snapshot
        with self._index_lock:
            if version <= self._index_written_version:
                return  # a newer index is already on disk
            tmp = self.dir / "index.json.tmp"
            with open(tmp, "wb") as f:
                f.write(json.dumps(data, sort_keys=True).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / "index.json")
            fsync_dir(self.dir)
            self._index_written_version = version

    # -- recovery ------------------------------------------------------------------------------------

    def _recover(self) -> None:
        index: dict[str, object] = {}
        with contextlib.suppress(FileNotFoundError):
            try:
                index = json.loads((self.dir / "index.json").read_bytes())
            except ValueError:
                log.error("spool index unreadable; replaying all records", extra={"dir": str(self.dir)})
        acked_below = index.get("acked_below", 0)
        seqs = index.get("next_seq", {})
        self._acked_below = acked_below if isinstance(acked_below, int) else 0
        if isinstance(seqs, dict):
            self._seqs = {str(k): int(v) for k, v in seqs.items()}
        last_telemetry: dict[str, bytes] = {}
        next_id = self._acked_below
        for path in sorted(self.dir.glob("seg-*.log")):
            seg = self._recover_segment(path, last_telemetry)
            if seg is None:
                continue
            self._segments.append(seg)
            self._bytes += seg.size
            next_id = max(next_id, seg.last_id + 1)
        self._next_id = next_id
        for topic, payload in last_telemetry.items():
            seq = telemetry_seq(payload)  # (JSON or binary, whichever the gateway was set to)
            if seq is not None:
                self._seqs[topic] = max(self._seqs.get(topic, 0), seq + 1)
        # Never hand out an id at or below the acknowledged mark again.
        self._next_id = max(self._next_id, self._acked_below)
        if self._segments:
            self._cursor_seg, self._cursor_off = self._segments[0], len(MAGIC)
        self.replayed = sum(
            max(0, seg.last_id + 1 - max(seg.first_id, self._acked_below)) for seg in self._segments
        )
        finished = [seg for seg in self._segments if seg.last_id < self._acked_below]
        if finished:
            self._delete(finished)
        if self.replayed or self.truncated:
            log.warning(
                "spool recovered",
                extra={"replaying": self.replayed, "truncated": self.truncated, "spool": str(self.dir)},
            )

    def _recover_segment(self, path: Path, last_telemetry: dict[str, bytes]) -> _Segment | None:
        first_id = segment_first_id(path)
        if first_id is None:
            return None
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            log.error("not a spool segment, set aside", extra={"file": str(path)})
            path.rename(path.with_suffix(".corrupt"))
            return None
        pos = len(MAGIC)
        expected = first_id
        for record_id, body, end in scan(data, first_id):
            topic, payload = decode_body(body)
            if topic.endswith(TELEMETRY_SUFFIX):
                last_telemetry[topic] = payload
            expected = record_id + 1
            pos = end
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        if pos < len(data):
            self.truncated += 1
            metrics.SPOOL_TRUNCATED.inc()
            log.warning(
                "spool segment truncated at a torn or corrupt record",
                extra={"file": str(path), "offset": pos, "lost_bytes": len(data) - pos},
            )
            os.ftruncate(fd, pos)
        os.fsync(fd)
        if expected == first_id:  # no records: nothing to keep
            os.close(fd)
            path.unlink()
            return None
        return _Segment(first_id, path, fd, pos, pos, expected - 1)
