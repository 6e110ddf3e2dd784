"""The on-disk record format shared by the services' disk spools (``gateway.spool``, ``ingest.spill``).

A spool is a directory of append-only segment files ``seg-{first record id:020d}.log``. A segment starts
with the 8-byte magic ``LSPOOL1\\n``; then records, each ``<u32 body length><u32 crc32(id, body)><u64 id>``
followed by the body ``<u16 topic length><topic utf-8><payload>`` (an MQTT message as received or to be
published). Record ids increase by one across segments. ``scan`` finds the valid records of a segment
and where they end: a torn or corrupt tail (a crash mid-write) ends the segment there.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"LSPOOL1\n"
HEADER = struct.Struct("<IIQ")  # body length, crc32 over id + body, record id
TOPIC_LEN = struct.Struct("<H")
ID = struct.Struct("<Q")
MAX_BODY = 64 * 1024 * 1024  # a length beyond this is garbage, not a record


def encode_record(record_id: int, topic: str, payload: bytes) -> bytes:
    raw_topic = topic.encode()
    body = TOPIC_LEN.pack(len(raw_topic)) + raw_topic + payload
    crc = zlib.crc32(body, zlib.crc32(ID.pack(record_id)))
    return HEADER.pack(len(body), crc, record_id) + body


def decode_body(body: bytes | memoryview) -> tuple[str, bytes]:
    """A record body as (topic, payload)."""
    (n,) = TOPIC_LEN.unpack_from(body, 0)
    return bytes(body[2 : 2 + n]).decode(), bytes(body[2 + n :])


def segment_name(first_id: int) -> str:
    return f"seg-{first_id:020d}.log"


def segment_first_id(path: Path) -> int | None:
    """The first record id a segment's name announces (None: not a segment name)."""
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def scan(data: bytes | memoryview, first_id: int) -> Iterator[tuple[int, memoryview, int]]:
    """The valid records of a segment's bytes (starting with ``MAGIC``): ``(record id, body, end offset)``,
    in order. Stops at the first record that is torn, corrupt or out of sequence."""
    view = memoryview(data)
    pos = len(MAGIC)
    expected = first_id
    while pos + HEADER.size <= len(view):
        length, crc, record_id = HEADER.unpack_from(view, pos)
        end = pos + HEADER.size + length
        if record_id != expected or length > MAX_BODY or end > len(view) or length < TOPIC_LEN.size:
            return
        body = view[pos + HEADER.size : end]
        if zlib.crc32(body, zlib.crc32(ID.pack(record_id))) != crc:
            return
        yield record_id, body, end
        expected += 1
        pos = end


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
