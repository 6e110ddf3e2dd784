"""Charging profiles, version-neutral: a profile stack per connector/EVSE and the limit in force.

OCPP 1.6 (3.13, 7.8) and 2.0.1 (K01, K08) agree on the rules used here:

- a profile is valid from ``valid_from`` to ``valid_to``; its schedule starts at ``start_schedule``
  (Absolute), repeats daily/weekly from it (Recurring) or starts with the transaction (Relative), and
  ends after ``duration`` (open-ended without one); the period in force is the last one whose
  ``start_period`` has passed;
- within one purpose the applicable profile with the highest ``stack_level`` wins; a profile with no
  period in force at that moment does not apply, so the next stack level (or nothing) takes over;
- TxProfile (for the running transaction) overrides TxDefaultProfile; a TxDefaultProfile on a
  connector overrides one installed on connector 0;
- the station-wide limits (ChargePointMaxProfile / ChargingStationMaxProfile on connector 0, and
  2.0.1's ChargingStationExternalConstraints) cap the result: the composite is the minimum.

Limits in A are turned into W with the connector's voltage and phases; everything else here is W.
No profile in force means no limit (``None``): the pile falls back to its own maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

RateUnit = Literal["W", "A"]
Kind = Literal["Absolute", "Recurring", "Relative"]


class Purpose(StrEnum):
    STATION_MAX = "station_max"  # 1.6 ChargePointMaxProfile, 2.0.1 ChargingStationMaxProfile
    TX_DEFAULT = "tx_default"  # TxDefaultProfile
    TX = "tx"  # TxProfile
    EXTERNAL = "external"  # 2.0.1 ChargingStationExternalConstraints


PURPOSE_NAMES: dict[str, Purpose] = {
    "ChargePointMaxProfile": Purpose.STATION_MAX,
    "ChargingStationMaxProfile": Purpose.STATION_MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
    "ChargingStationExternalConstraints": Purpose.EXTERNAL,
}
STATION_PURPOSES = (Purpose.STATION_MAX, Purpose.EXTERNAL)
RECURRENCE_S = {"Daily": 86_400.0, "Weekly": 7 * 86_400.0}


@dataclass(frozen=True, slots=True)
class Period:
    start_s: float
    limit: float  # in the schedule's unit
    phases: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    id: int
    stack_level: int
    purpose: Purpose
    unit: RateUnit
    periods: tuple[Period, ...]  # sorted by start_s, the first at 0
    kind: Kind = "Absolute"
    start_schedule: datetime | None = None
    duration_s: float | None = None
    recurrency: Literal["Daily", "Weekly"] | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None  # TxProfile: the transaction it belongs to (as a string)
    min_rate: float | None = None
    installed_at: datetime | None = None  # anchors Absolute/Recurring schedules without start_schedule

    def anchor(self, now: datetime, tx_start: datetime | None) -> datetime | None:
        """When the schedule's period 0 began for the cycle containing ``now`` (None: not started)."""
        if self.kind == "Relative":
            return tx_start
        start = self.start_schedule or self.valid_from or self.installed_at or tx_start
        if start is None:
            return None
        if self.kind == "Recurring":
            cycle = RECURRENCE_S.get(self.recurrency or "Daily", 86_400.0)
            elapsed = (now - start).total_seconds()
            return start + timedelta(seconds=(elapsed // cycle) * cycle)
        return start

    def valid_at(self, now: datetime) -> bool:
        return (self.valid_from is None or now >= self.valid_from) and (
            self.valid_to is None or now < self.valid_to
        )

    def period_at(self, now: datetime, tx_start: datetime | None) -> Period | None:
        """The period in force at ``now``, or None if the profile does not apply then."""
        if not self.valid_at(now):
            return None
        anchor = self.anchor(now, tx_start)
        if anchor is None:
            return None
        elapsed = (now - anchor).total_seconds()
        if elapsed < 0 or (self.duration_s is not None and elapsed >= self.duration_s):
            return None
        found: Period | None = None
        for p in self.periods:
            if p.start_s <= elapsed:
                found = p
            else:
                break
        return found

    def boundaries(self, start: datetime, end: datetime, tx_start: datetime | None) -> list[datetime]:
        """Every instant in [start, end) where this profile's contribution may change."""
        out = [t for t in (self.valid_from, self.valid_to) if t is not None and start <= t < end]
        anchors: list[datetime] = []
        if self.kind == "Recurring":
            cycle = timedelta(seconds=RECURRENCE_S.get(self.recurrency or "Daily", 86_400.0))
            a = self.anchor(start, tx_start)
            while a is not None and a < end:
                anchors.append(a)
                a += cycle
        else:
            a = self.anchor(start, tx_start)
            if a is not None:
                anchors.append(a)
        for a in anchors:
            offsets = [p.start_s for p in self.periods]
            if self.duration_s is not None:
                offsets.append(self.duration_s)
            for off in offsets:
                t = a + timedelta(seconds=off)
                if start <= t < end:
                    out.append(t)
        return out


@dataclass(frozen=True, slots=True)
class Electrical:
    """How a connector turns amperes into watts: W = A x voltage x phases (DC: phases = 1)."""

    voltage_v: float = 230.0
    phases: int = 1

    def to_w(self, limit: float, unit: RateUnit, phases: int | None = None) -> float:
        if unit == "W":
            return limit
        return limit * self.voltage_v * (phases or self.phases)

    def to_unit(self, watts: float, unit: RateUnit) -> float:
        return watts if unit == "W" else watts / (self.voltage_v * self.phases)


@dataclass(slots=True)
class ProfileStack:
    """The charging profiles installed on one station: connector 0 is the station, 1..n the outlets."""

    electrical: Electrical = field(default_factory=Electrical)
    max_stack_level: int = 8
    profiles: dict[int, list[Profile]] = field(default_factory=dict)  # connector id -> profiles

    def all(self) -> Iterable[tuple[int, Profile]]:
        for cid, ps in self.profiles.items():
            for p in ps:
                yield cid, p

    def install(self, connector_id: int, profile: Profile) -> None:
        """Add a profile, replacing one with the same id anywhere, or the same stack level and purpose on
        the same connector (1.6 §5.16.1, 2.0.1 K01.FR.05/06)."""
        for cid in list(self.profiles):
            self.profiles[cid] = [
                p
                for p in self.profiles[cid]
                if p.id != profile.id
                and not (
                    cid == connector_id
                    and p.stack_level == profile.stack_level
                    and p.purpose == profile.purpose
                )
            ]
        self.profiles.setdefault(connector_id, []).append(profile)

    def clear(
        self,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        """Remove matching profiles (by id alone if given, else by the other criteria); how many went."""
        removed = 0
        for cid in list(self.profiles):
            keep: list[Profile] = []
            for p in self.profiles[cid]:
                if profile_id is not None:
                    match = p.id == profile_id
                else:
                    match = (
                        (connector_id is None or cid == connector_id)
                        and (purpose is None or p.purpose == purpose)
                        and (stack_level is None or p.stack_level == stack_level)
                    )
                if match:
                    removed += 1
                else:
                    keep.append(p)
            self.profiles[cid] = keep
        return removed

    def end_transaction(self, connector_id: int) -> None:
        """TxProfiles live as long as their transaction."""
        self.clear(connector_id=connector_id, purpose=Purpose.TX)

    def prune(self, now: datetime) -> int:
        """Drop profiles whose validity has ended (they no longer apply anyway)."""
        removed = 0
        for cid, ps in self.profiles.items():
            keep = [p for p in ps if p.valid_to is None or p.valid_to > now]
            removed += len(ps) - len(keep)
            self.profiles[cid] = keep
        return removed

    def _top(
        self, connector_id: int, purpose: Purpose, now: datetime, tx_start: datetime | None, tx_id: str | None
    ) -> float | None:
        best: tuple[int, float] | None = None
        for p in self.profiles.get(connector_id, ()):
            if p.purpose != purpose:
                continue
            if purpose == Purpose.TX and (tx_id is None or (p.transaction_id not in (None, tx_id))):
                continue
            if best is not None and p.stack_level <= best[0]:
                continue
            period = p.period_at(now, tx_start)
            if period is not None:
                best = (p.stack_level, self.electrical.to_w(period.limit, p.unit, period.phases))
        return None if best is None else best[1]

    def station_limit_w(self, now: datetime) -> float | None:
        """The station-wide cap (max profile, external constraints) at ``now``; None if none applies."""
        limits = [self._top(0, purpose, now, None, None) for purpose in STATION_PURPOSES]
        found = [x for x in limits if x is not None]
        return min(found) if found else None

    def connector_limit_w(
        self, connector_id: int, now: datetime, tx_start: datetime | None = None, tx_id: str | None = None
    ) -> float | None:
        """TxProfile, else TxDefaultProfile (connector before connector 0), at ``now``; None if none."""
        if tx_start is not None:
            lim = self._top(connector_id, Purpose.TX, now, tx_start, tx_id)
            if lim is not None:
                return lim
        lim = self._top(connector_id, Purpose.TX_DEFAULT, now, tx_start, tx_id)
        if lim is None and connector_id != 0:
            lim = self._top(0, Purpose.TX_DEFAULT, now, tx_start, tx_id)
        return lim

    def limit_w(
        self, connector_id: int, now: datetime, tx_start: datetime | None = None, tx_id: str | None = None
    ) -> float | None:
        """The composite limit in force for one connector (station caps included); None: no limit."""
        found = [
            x
            for x in (self.station_limit_w(now), self.connector_limit_w(connector_id, now, tx_start, tx_id))
            if x is not None
        ]
        return min(found) if found else None

    def composite(
        self,
        connector_id: int,
        start: datetime,
        duration_s: float,
        max_w: float,
        tx_start: datetime | None = None,
        tx_id: str | None = None,
        limit_fn: Callable[[datetime], float | None] | None = None,
    ) -> list[tuple[float, float]]:
        """The composite schedule over [start, start + duration): (offset s, limit W) at each change,
        capped at ``max_w``. Connector 0 gives the station's own schedule."""
        end = start + timedelta(seconds=duration_s)
        points = {start}
        for cid, p in self.all():
            if cid in (0, connector_id):
                points.update(p.boundaries(start, end, tx_start))
        fn = limit_fn or (
            (lambda t: self.station_limit_w(t))
            if connector_id == 0
            else (lambda t: self.limit_w(connector_id, t, tx_start, tx_id))
        )
        out: list[tuple[float, float]] = []
        for t in sorted(points):
            lim = fn(t)
            value = max_w if lim is None else min(max_w, lim)
            if not out or out[-1][1] != value:
                out.append(((t - start).total_seconds(), value))
        return out


def parse_profile(
    raw: dict[str, object],
    *,
    schedule: dict[str, object],
    installed_at: datetime,
    transaction_id: str | None = None,
) -> Profile:
    """A profile from the library's snake_case payload (either version; the caller picks the schedule:
    1.6 has one ``charging_schedule``, 2.0.1 a list of them)."""
    purpose = PURPOSE_NAMES[str(raw["charging_profile_purpose"])]
    periods = tuple(
        sorted(
            (
                Period(
                    start_s=_num(p["start_period"]),
                    limit=_num(p["limit"]),
                    phases=int(_num(p["number_phases"])) if p.get("number_phases") is not None else None,
                )
                for p in _dicts(schedule.get("charging_schedule_period"))
            ),
            key=lambda p: p.start_s,
        )
    )
    duration = schedule.get("duration")
    min_rate = schedule.get("min_charging_rate")
    tx_raw = raw.get("transaction_id")
    return Profile(
        id=int(_num(raw.get("charging_profile_id", raw.get("id")))),
        stack_level=int(_num(raw["stack_level"])),
        purpose=purpose,
        unit="A" if schedule.get("charging_rate_unit") == "A" else "W",
        periods=periods,
        kind=_kind(raw.get("charging_profile_kind")),
        start_schedule=_dt(schedule.get("start_schedule")),
        duration_s=float(_num(duration)) if duration is not None else None,
        recurrency="Weekly" if raw.get("recurrency_kind") == "Weekly" else "Daily",
        valid_from=_dt(raw.get("valid_from")),
        valid_to=_dt(raw.get("valid_to")),
        transaction_id=str(tx_raw) if tx_raw is not None else transaction_id,
        min_rate=float(_num(min_rate)) if min_rate is not None else None,
        installed_at=installed_at,
    )


def _kind(value: object) -> Kind:
    if value == "Recurring":
        return "Recurring"
    if value == "Relative":
        return "Relative"
    return "Absolute"


def _num(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    return float(str(value))  # Decimal (1.6 profiles are parsed with Decimal for validation) or str


def _dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dt(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
