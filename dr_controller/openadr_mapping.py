"""OpenADR 2.0b events, as openleadr parses them, mapped onto Lishui's event model. Pure: no I/O.

What a VTN may ask and what it becomes (one signal per event is used: the first of LOAD_DISPATCH,
LOAD_CONTROL, SIMPLE it carries; others beside it, e.g. a price, are informational):

- ``LOAD_DISPATCH`` / ``delta``: a change of load in kW (the signal's itemBase, W/kW/MW; kW when it has
  none). Negative: peak shaving with that reduction target; positive: valley filling with that increase.
- ``LOAD_DISPATCH`` / ``setpoint``: the aggregate load to hold, kW. Below the scope's net load now: peak
  shaving with a cap; above it: valley filling with a floor.
- ``LOAD_CONTROL`` / ``x-loadControlPercentOffset``: a percent change of the scope's net load now
  (negative: reduce).
- ``SIMPLE`` / ``level``: 0 normal operation, 1..3 moderate, high, special: peak shaving with the
  program's target for the level (``settings.openadr.simple_levels_kw``).

A payload of "no change" (level 0, delta 0, a setpoint at the load) asks nothing for that interval.
Consecutive intervals asking the same become one Lishui event (a *part*); an event whose intervals ask
different amounts becomes several. Lishui settles whole 15-minute intervals: the event's first start is
moved back and its last end forward to the grid, boundaries inside it to the nearest grid point (so
parts never overlap); a part that shrinks to nothing is dropped.

Anything else (other signals or types, open-ended or overlapping intervals, values out of range, units
that are not power, target types Lishui cannot resolve) is refused with the reason (:class:`Refusal`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from core.dr.baselines import SLOT_MIN
from core.dr.events import EventKind, EventSpec, Notice

__all__ = [
    "OPT_IN",
    "OPT_OUT",
    "Ask",
    "Part",
    "Refusal",
    "Selector",
    "plan",
    "required_kw",
    "selector",
    "to_specs",
]

OPT_IN = "optIn"
OPT_OUT = "optOut"
# OpenADR optReason codes (the schema's enumeration) sent with an opt-out.
NOT_PARTICIPATING = "notParticipating"
MUST_RUN = "mustRun"

GRID = timedelta(minutes=SLOT_MIN)
SIGNAL_ORDER = ("LOAD_DISPATCH", "LOAD_CONTROL", "SIMPLE")
SUPPORTED_TYPES = {
    "LOAD_DISPATCH": ("delta", "setpoint"),
    "LOAD_CONTROL": ("x-loadControlPercentOffset",),
    "SIMPLE": ("level",),
}
_SCALE_TO_KW = {"none": 1e-3, "k": 1.0, "M": 1e3, "G": 1e6}
_ZERO_KW = 1e-6  # a delta or setpoint difference below this asks nothing


class Refusal(Exception):
    """Why Lishui opts out of an event: ``text`` for people (stored and logged), ``opt_reason`` the
    OpenADR code that goes to the VTN with the opt-out."""

    def __init__(self, text: str, opt_reason: str = NOT_PARTICIPATING) -> None:
        super().__init__(text)
        self.text = text
        self.opt_reason = opt_reason


@dataclass(frozen=True, slots=True)
class Selector:
    """What the event's targets name besides this VEN: sites (resourceID = site key), or one town or
    feeder (groupID = town key or feeder name). Neither: the whole county."""

    site_keys: tuple[str, ...] = ()
    group: str | None = None


_IGNORED_TARGETS = {"ven_id", "ven_name"}  # this VEN itself: the whole of what it represents


def selector(targets: Sequence[Mapping[str, Any]] | None) -> Selector:
    site_keys: list[str] = []
    groups: list[str] = []
    for target in targets or ():
        for kind, value in target.items():
            if value is None or kind in _IGNORED_TARGETS:
                continue
            values = value if isinstance(value, list | tuple) else [value]
            if kind == "resource_id":
                site_keys.extend(str(v) for v in values)
            elif kind in ("group_id", "group_name"):
                groups.extend(str(v) for v in values)
            else:
                raise Refusal(
                    f"target type {kind!r} is not supported (resourceID = site, groupID = town/feeder)"
                )
    if site_keys and groups:
        raise Refusal("targets mix resources and groups: give sites or one town/feeder")
    if len(set(groups)) > 1:
        raise Refusal(f"targets name {len(set(groups))} groups: give one town or feeder per event")
    return Selector(tuple(sorted(set(site_keys))), groups[0] if groups else None)


@dataclass(frozen=True, slots=True)
class Ask:
    """One interval's request in Lishui's terms: a kind and exactly one amount."""

    kind: EventKind
    target_kw: float | None = None
    cap_kw: float | None = None
    floor_kw: float | None = None


@dataclass(frozen=True, slots=True)
class Part:
    starts_at: datetime
    ends_at: datetime
    ask: Ask

    @property
    def minutes(self) -> float:
        return (self.ends_at - self.starts_at).total_seconds() / 60


def required_kw(ask: Ask, net_load_kw: float) -> float:
    """The response an ask needs now: its target, or the distance from the net load to its cap/floor."""
    if ask.target_kw is not None:
        return ask.target_kw
    if ask.cap_kw is not None:
        return max(0.0, net_load_kw - ask.cap_kw)
    assert ask.floor_kw is not None
    return max(0.0, ask.floor_kw - net_load_kw)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Refusal(f"{what}: {value!r} is not a finite number")
    return float(value)


def _kw_per_unit(signal: Mapping[str, Any]) -> float:
    measurement = signal.get("measurement")
    if not measurement:
        return 1.0  # no itemBase: the program's unit, kW
    unit = measurement.get("unit")
    scale = measurement.get("scale") or "none"
    if unit != "W" or scale not in _SCALE_TO_KW:
        raise Refusal(f"signal unit {scale} {unit} is not a power Lishui understands (W, kW, MW)")
    return _SCALE_TO_KW[scale]


def _ask(
    name: str, kind: str, payload: Any, *, kw_per_unit: float, levels_kw: Sequence[float], net_load_kw: float
) -> Ask | None:
    value = _number(payload, f"{name} {kind} payload")
    if name == "SIMPLE":
        if value != int(value) or not 0 <= value <= len(levels_kw):
            raise Refusal(f"SIMPLE level {value:g} is outside 0..{len(levels_kw)}")
        return None if value == 0 else Ask(EventKind.PEAK_SHAVING, target_kw=levels_kw[int(value) - 1])
    if name == "LOAD_CONTROL":  # x-loadControlPercentOffset
        if not -100 <= value <= 100:
            raise Refusal(f"load control offset {value:g} % is outside -100..100")
        if value == 0:
            return None
        if net_load_kw <= 0:
            raise Refusal("a percent offset needs a positive net load in scope; there is none now")
        value = value / 100 * net_load_kw
        kind = "delta"
    else:
        value *= kw_per_unit
    if kind == "delta":
        if abs(value) < _ZERO_KW:
            return None
        if value < 0:
            return Ask(EventKind.PEAK_SHAVING, target_kw=-value)
        return Ask(EventKind.VALLEY_FILLING, target_kw=value)
    if value < 0:  # setpoint
        raise Refusal(f"load setpoint {value:g} kW is negative")
    if abs(value - net_load_kw) < _ZERO_KW:
        return None
    if value < net_load_kw:
        return Ask(EventKind.PEAK_SHAVING, cap_kw=value)
    return Ask(EventKind.VALLEY_FILLING, floor_kw=value)


def _signal(event: Mapping[str, Any]) -> Mapping[str, Any]:
    signals = event.get("event_signals") or []
    if isinstance(signals, Mapping):  # openleadr nests them once in some messages
        signals = signals.get("event_signals") or []
    for name in SIGNAL_ORDER:
        for signal in signals:
            if str(signal.get("signal_name", "")).upper() != name:
                continue
            if signal.get("signal_type") in SUPPORTED_TYPES[name]:
                return signal
    offered = ", ".join(f"{s.get('signal_name')}/{s.get('signal_type')}" for s in signals) or "none"
    raise Refusal(
        f"no supported signal (offered: {offered}; Lishui takes LOAD_DISPATCH delta/setpoint,"
        " LOAD_CONTROL x-loadControlPercentOffset, SIMPLE level)"
    )


def _floor(t: datetime) -> datetime:
    epoch = t.timestamp()
    return t - timedelta(seconds=epoch % GRID.total_seconds())


def _ceil(t: datetime) -> datetime:
    low = _floor(t)
    return low if low == t else low + GRID


def _nearest(t: datetime) -> datetime:
    low = _floor(t)
    return low + GRID if (t - low) * 2 >= GRID else low


def plan(
    event: Mapping[str, Any],
    *,
    levels_kw: Sequence[float],
    net_load_kw: float,
    max_hours: float = 24.0,
) -> list[Part]:
    """The event's parts: consecutive intervals asking the same, on the 15-minute grid. Empty when the
    event asks nothing (normal operation throughout). Raises :class:`Refusal`."""
    signal = _signal(event)
    name, kind = str(signal["signal_name"]).upper(), str(signal["signal_type"])
    kw_per_unit = _kw_per_unit(signal) if name == "LOAD_DISPATCH" else 1.0
    intervals = sorted(signal.get("intervals") or [], key=lambda i: i.get("dtstart") or datetime.min)
    if not intervals:
        raise Refusal("the signal has no intervals")
    spans: list[tuple[datetime, datetime, Ask | None]] = []
    for interval in intervals:
        start, duration = interval.get("dtstart"), interval.get("duration")
        if not isinstance(start, datetime) or start.tzinfo is None:
            raise Refusal(f"interval {interval.get('uid')} has no start time")
        if not isinstance(duration, timedelta) or duration <= timedelta(0):
            raise Refusal(f"interval {interval.get('uid')} is open-ended or empty: Lishui needs an end")
        if spans and start < spans[-1][1]:
            raise Refusal(f"interval {interval.get('uid')} overlaps the one before it")
        ask = _ask(
            name,
            kind,
            interval.get("signal_payload"),
            kw_per_unit=kw_per_unit,
            levels_kw=levels_kw,
            net_load_kw=net_load_kw,
        )
        spans.append((start, start + duration, ask))
    if spans[-1][1] - spans[0][0] > timedelta(hours=max_hours):
        raise Refusal(f"the event lasts longer than {max_hours:g} h")
    # Boundaries on the grid: the outer ones outward, the inner ones (including around gaps, so a gap
    # never lets two parts overlap) to the nearest point.
    edges = [_floor(spans[0][0])]
    for (_, end, _), (start, _, _) in pairwise(spans):
        edges.append(_nearest(end))
        if start > end:  # a gap between intervals: its own (empty) span
            edges.append(_nearest(start))
    edges.append(_ceil(spans[-1][1]))
    asks: list[Ask | None] = []
    for i, (start, _, ask) in enumerate(spans):
        if i and start > spans[i - 1][1]:
            asks.append(None)
        asks.append(ask)
    parts: list[Part] = []
    for (lo, hi), ask in zip(pairwise(edges), asks, strict=True):
        if ask is None or hi <= lo:
            continue
        if parts and parts[-1].ask == ask and parts[-1].ends_at == lo:
            parts[-1] = Part(parts[-1].starts_at, hi, ask)
        else:
            parts.append(Part(lo, hi, ask))
    return parts


def notice(starts_at: datetime, now: datetime, tz: ZoneInfo) -> Notice:
    """Day-ahead when the request came on an earlier (local) day than the event starts."""
    return (
        Notice.DAY_AHEAD if now.astimezone(tz).date() < starts_at.astimezone(tz).date() else Notice.INTRADAY
    )


def to_specs(
    parts: Sequence[Part], scope: Mapping[str, Any], *, now: datetime, tz: ZoneInfo, baseline: str
) -> dict[int, EventSpec]:
    """Lishui events for the parts, by part number (``scope``: the EventSpec scope fields). A part
    already over is left out; ``now`` is when the request arrived."""
    return {
        number: EventSpec.model_validate(
            {
                "kind": part.ask.kind,
                "target_kw": part.ask.target_kw,
                "cap_kw": part.ask.cap_kw,
                "floor_kw": part.ask.floor_kw,
                "starts_at": part.starts_at,
                "ends_at": part.ends_at,
                "notice": notice(part.starts_at, now, tz),
                "baseline": baseline,
                **scope,
            }
        )
        for number, part in enumerate(parts)
        if part.ends_at > now
    }
