"""Ingest's disk spill: received MQTT messages held on local disk while the database is away.

The broker's queue for ingest's session is bounded (``max_queued_messages``/``max_queued_bytes``), and
past it Mosquitto drops QoS 1 messages: a long database outage at scale would lose readings if ingest only
held back its acknowledgements. So, once writes have failed for ``spill_after_s``, the service appends
each batch's accepted messages (topic and raw payload, from which the writer derives the same message
identity, device + seq + digest, as on the live path) here, fsyncs, and only then acknowledges them.
A replay task (``IngestService._replay``) writes the spill back when the database answers, oldest
segment first, through the same writer; a segment is deleted once all its messages are committed.

Nothing lost, nothing doubled: a message is acknowledged only after it is on disk (a crash before that
gets it redelivered by the broker); a segment is deleted only after its messages are committed (a crash
mid-replay replays the segment again, and the writer skips every message whose identity is already
committed). A message both spilled and redelivered is written once for the same reason.

On disk, in ``directory`` (one per ingest instance, ``flock``-ed): segments in the ``core.spool`` format.
Only sealed segments are replayed: the replay seals the one being appended to when it has caught up with
the others. Past ``max_bytes`` ``append`` refuses (the caller stops acknowledging; the broker holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from core.spool import MAGIC, decode_body, encode_record, fsync_dir, scan, segment_first_id, segment_name
from ingest import metrics as m

log = logging.getLogger(__name__)

Record = tuple[str, bytes]  # (topic, payload)


class SpillLocked(RuntimeError):
    """Another process holds this spill directory."""


@dataclass(eq=False)
class Segment:
    first_id: int
    path: Path
    size: int
    messages: int


class Spill:
    def __init__(self, directory: str | Path, *, max_bytes: int, segment_bytes: int = 8 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpillLocked(f"spill {self.dir} is in use by another process") from None
        self._sealed: list[Segment] = []  # oldest first, waiting for replay
        self._active: Segment | None = None
        self._active_fd = -1
        self._next_id = 0
        self._bytes = 0
        self._messages = 0
        self._append_lock = asyncio.Lock()
        self._available = asyncio.Event()
        self._recover()

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def messages(self) -> int:
        return self._messages

    def __bool__(self) -> bool:
        return self._messages > 0

    # -- appending ------------------------------------------------------------------------------------

    async def append(self, records: list[Record]) -> bool:
        """Append and fsync ``records``; False (nothing written) if that would exceed ``max_bytes``."""
        async with self._append_lock:
            if not records:
                return True
            data = b"".join(encode_record(self._next_id + i, t, p) for i, (t, p) in enumerate(records))
            if self._bytes + len(data) + len(MAGIC) > self.max_bytes:
                return False
            seg = self._active
            if seg is None or (seg.size + len(data) > self.segment_bytes and seg.messages):
                self._seal_active()
                seg = await asyncio.to_thread(self._open_segment, self._next_id)
            fd, size = self._active_fd, seg.size
            # Counted before the write: if the caller is cancelled meanwhile, the write still completes
            # in its thread, and the next record ids must follow it.
            seg.size += len(data)
            seg.messages += len(records)
            self._next_id += len(records)
            self._bytes += len(data)
            self._messages += len(records)
            try:
                await asyncio.to_thread(_write_durably, fd, data)
            except OSError:
                # (A disk full, say: cut what was written, so the records after it stay readable.)
                log.exception("spill append failed", extra={"dir": str(self.dir)})
                os.ftruncate(fd, size)
                seg.size = size
                seg.messages -= len(records)
                self._next_id -= len(records)
                self._bytes -= len(data)
                self._messages -= len(records)
                return False
            m.SPILLED.inc(len(records))
            self._gauges()
            self._available.set()
            return True

    def _open_segment(self, first_id: int) -> Segment:
        path = self.dir / segment_name(first_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        _write_durably(fd, MAGIC)
        fsync_dir(self.dir)
        seg = Segment(first_id, path, len(MAGIC), 0)
        self._active, self._active_fd = seg, fd
        self._bytes += len(MAGIC)
        return seg

    def _seal_active(self) -> None:
        if self._active is None:
            return
        os.close(self._active_fd)
        seg, self._active, self._active_fd = self._active, None, -1
        if seg.messages:
            self._sealed.append(seg)
        else:  # (never happens after an append; kept tidy)
            self._bytes -= seg.size
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()

    # -- replaying ------------------------------------------------------------------------------------

    async def oldest(self) -> tuple[Segment, list[Record]]:
        """The oldest segment and its messages; waits until there is one (sealing the segment being
        appended to if it is the only one)."""
        while True:
            async with self._append_lock:
                if not self._sealed and self._active is not None and self._active.messages:
                    self._seal_active()
                if self._sealed:
                    seg = self._sealed[0]
                    data = await asyncio.to_thread(seg.path.read_bytes)
                    return seg, [decode_body(body) for _, body, _ in scan(data, seg.first_id)]
                self._available.clear()
            await self._available.wait()

    async def release(self, seg: Segment) -> None:
        """``seg``'s messages are committed: delete it."""
        self._sealed.remove(seg)
        self._bytes -= seg.size
        self._messages -= seg.messages
        m.REPLAYED.inc(seg.messages)
        self._gauges()

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                seg.path.unlink()
            fsync_dir(self.dir)

        await asyncio.to_thread(delete)

    def close(self) -> None:
        self._seal_active()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    # -- recovery -------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Every segment left by an earlier run is sealed and replayed; a torn tail (a crash mid-append:
        those messages were never acknowledged) is cut off."""
        for path in sorted(self.dir.glob("seg-*.log")):
            first_id = segment_first_id(path)
            if first_id is None:
                continue
            data = path.read_bytes()
            ends = [end for _, _, end in scan(data, first_id)] if data.startswith(MAGIC) else []
            if not ends:
                path.unlink()
                continue
            if ends[-1] < len(data):
                log.warning("spill segment truncated at a torn record", extra={"file": str(path)})
                with open(path, "r+b") as f:
                    f.truncate(ends[-1])
                    os.fsync(f.fileno())
            self._sealed.append(Segment(first_id, path, ends[-1], len(ends)))
            self._bytes += ends[-1]
            self._messages += len(ends)
            self._next_id = max(self._next_id, first_id + len(ends))
        fsync_dir(self.dir)
        if self._sealed:
            log.warning(
                "spill found at start, to be replayed",
                extra={"messages": self._messages, "dir": str(self.dir)},
            )
            self._available.set()
        self._gauges()

    def _gauges(self) -> None:
        m.SPILL_BYTES.set(self._bytes)
        m.SPILL_MESSAGES.set(self._messages)


def _write_durably(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fdatasync(fd)
