"""The read planner: which requests cover the registers a device must read each poll.

Rule: spans (registers of a profile, or whole SunSpec models) are sorted by address and merged into
one request while (a) they are in the same table, (b) the gap between them is at most ``max_gap``
registers and *every* register in the gap is known to be mapped (a read touching an unmapped register
of a vendor map fails with exception 02), and (c) the request stays within 125 registers. Longer
spans are split. So a read never touches an address outside the spans and known-mapped ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_REGISTERS = 125


@dataclass(frozen=True, slots=True, order=True)
class Span:
    table: str
    start: int
    count: int

    @property
    def end(self) -> int:  # exclusive
        return self.start + self.count


ReadBlock = Span  # a planned request has the same shape as a span


def plan_reads(
    spans: Iterable[Span],
    is_mapped: Callable[[str, int], bool],
    max_gap: int = 0,
    max_count: int = MAX_REGISTERS,
) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    for span in _split(_union(spans), max_count):
        if blocks:
            last = blocks[-1]
            gap = range(last.end, span.start)
            if (
                span.table == last.table
                and len(gap) <= max_gap
                and span.end - last.start <= max_count
                and all(is_mapped(span.table, addr) for addr in gap)
            ):
                blocks[-1] = Span(last.table, last.start, span.end - last.start)
                continue
        blocks.append(span)
    return blocks


def _union(spans: Iterable[Span]) -> list[Span]:
    """Overlapping or touching spans of one table as one."""
    merged: list[Span] = []
    for span in sorted(s for s in spans if s.count > 0):
        if merged and merged[-1].table == span.table and span.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Span(last.table, last.start, max(last.end, span.end) - last.start)
        else:
            merged.append(span)
    return merged


def _split(spans: list[Span], max_count: int) -> list[Span]:
    out: list[Span] = []
    for span in spans:
        for start in range(span.start, span.end, max_count):
            out.append(Span(span.table, start, min(max_count, span.end - start)))
    return out
