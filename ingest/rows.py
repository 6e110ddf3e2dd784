"""Telemetry rows as numpy columns, and their binary COPY encoding, with no Python per reading.

A message's readings are three columns: time (microseconds since the Unix epoch), metric id, value. A
binary payload's columns are numpy views of its bytes; a JSON payload's are built from its samples. A
batch's rows are encoded for ``COPY telemetry (ts, device_id, metric_id, value) FROM STDIN (FORMAT
BINARY)`` in one vectorised pass over the messages' concatenated columns: 20,000 rows take well under a
millisecond, where packing them one by one with ``struct`` took about 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

# One row of binary COPY: the field count, then each field's byte length and value, all big-endian;
# timestamptz is microseconds since 2000-01-01 (PostgreSQL's epoch). 40 bytes, packed.
ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("device_len", ">i4"),
        ("device", ">i4"),
        ("metric_len", ">i4"),
        ("metric", ">i2"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
PG_EPOCH_US = (datetime(2000, 1, 1, tzinfo=UTC) - UNIX_EPOCH) // MICROSECOND
MINUTE_US = 60_000_000


@dataclass(slots=True)
class Columns:
    """A message's readings, sample by sample: sample ``i`` at ``stamps_us[i]`` holds ``counts[i]``
    readings, the next ones of ``metric_ids`` and ``values``. Any sequences numpy can read: lists (from
    JSON) or memoryviews of a binary payload (read without a copy)."""

    stamps_us: Sequence[int]
    counts: Sequence[int]
    metric_ids: Sequence[int]
    values: Sequence[float]

    def __len__(self) -> int:
        return len(self.metric_ids)


def micros(ts: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch."""
    return (ts - UNIX_EPOCH) // MICROSECOND


def from_micros(us: int) -> datetime:
    return UNIX_EPOCH + us * MICROSECOND


def _joined(parts: list[Sequence[Any]], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """The parts end to end: memoryviews of binary payloads joined as bytes (one copy, in C), anything
    else (lists from JSON) converted part by part."""
    if all(type(p) is memoryview for p in parts):
        return np.frombuffer(b"".join(parts), dtype)  # type: ignore[arg-type]
    return np.concatenate([np.asarray(p, dtype) for p in parts])


def copy_rows(parts: Sequence[tuple[int, Columns]]) -> bytes:
    """The binary COPY rows (no header or trailer) of each ``(device_id, columns)``, in order."""
    if not parts:
        return b""
    counts = np.fromiter(chain.from_iterable(c.counts for _, c in parts), np.int64)
    rows = np.empty(int(counts.sum()), ROW)
    rows["fields"] = 4
    rows["ts_len"] = 8
    rows["device_len"] = 4
    rows["metric_len"] = 2
    rows["value_len"] = 8
    # (The views' formats: microseconds "q", metric ids "H", values "d"; lists convert to the same.)
    rows["ts"] = np.repeat(_joined([c.stamps_us for _, c in parts], np.int64) - PG_EPOCH_US, counts)
    rows["device"] = np.repeat(
        np.array([d for d, _ in parts], np.int32), np.array([len(c) for _, c in parts], np.int64)
    )
    rows["metric"] = _joined([c.metric_ids for _, c in parts], np.uint16)
    rows["value"] = _joined([c.values for _, c in parts], np.float64)
    return rows.tobytes()
