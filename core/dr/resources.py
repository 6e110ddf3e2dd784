"""What each demand-response resource can give now, for how long, and how to command it.

Everything here is in kW and kWh, and every flexibility is a non-negative amount *in the direction of
the event*:

- ``Direction.REDUCE`` (peak shaving): lower the net load the grid sees — raise hydro output, discharge
  storage (or stop charging), curtail flexible load, lower EV charging;
- ``Direction.RAISE`` (valley filling, 填谷): raise the net load — lower hydro output (water is kept for
  later), charge storage (or stop discharging), raise flexible load (its load-raise setpoint). EV
  charging is a lever for peak shaving only: a site limit caps charging, it cannot make EVs draw more.

Dispatch amounts are relative to a *reference* operating point taken when the event starts (the
``output_kw`` / ``power_kw`` / ``load_kw`` fields), so re-dispatching every cycle never drifts.
Device power follows ``core.metrics``: generators and storage + output, loads and chargers + import.

Tiers (有序用电, 0–9) order the users: tier 0 is never curtailed (nor touched at all, not even raised),
higher tiers are curtailed (or raised) first. Hydro and storage are tier-free.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from core.payloads import Command
from core.topics import SITE_TARGET

__all__ = [
    "DeviceCommand",
    "Direction",
    "EvChargingSite",
    "Flexibility",
    "FlexibleLoad",
    "HydroUnit",
    "Resource",
    "ResourceKind",
    "ResourceMeter",
    "StorageUnit",
    "Window",
]

UNLIMITED = math.inf


class Direction(StrEnum):
    REDUCE = "reduce"  # peak shaving: the grid sees less load
    RAISE = "raise"  # valley filling: the grid sees more load


class ResourceKind(StrEnum):
    HYDRO = "hydro"
    FLEXIBLE_LOAD = "flexible_load"
    STORAGE = "storage"
    EV_CHARGING = "ev_charging"


@dataclass(frozen=True, slots=True)
class Window:
    """The part of the event still to come, and the length of one allocation step (for ramps)."""

    remaining_min: float
    step_min: float = 15.0

    def __post_init__(self) -> None:
        if not (self.remaining_min > 0 and self.step_min > 0):
            raise ValueError("window lengths must be positive")

    @property
    def remaining_h(self) -> float:
        return self.remaining_min / 60.0


@dataclass(frozen=True, slots=True)
class Flexibility:
    """One resource as the allocator sees it: how much it can give in the event's direction.

    ``available_kw`` is sustainable over the remaining window (energy limits already applied);
    ``dispatched_kw`` is what it is giving now under this event; ``ramp_kw`` bounds the change from
    that in one step. ``tier`` is None for tier-free resources (generation, storage).
    """

    resource_id: str
    kind: ResourceKind
    tier: int | None
    cost_per_kwh: float
    available_kw: float
    dispatched_kw: float = 0.0
    ramp_kw: float = UNLIMITED

    def __post_init__(self) -> None:
        if self.tier is not None and not 0 <= self.tier <= 9:
            raise ValueError(f"{self.resource_id}: tier {self.tier} is outside 0..9")
        for name in ("available_kw", "dispatched_kw", "ramp_kw"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise ValueError(f"{self.resource_id}: {name} must be >= 0, got {value}")
        if not math.isfinite(self.cost_per_kwh):
            raise ValueError(f"{self.resource_id}: cost must be finite")

    @property
    def bounds_kw(self) -> tuple[float, float]:
        """The dispatch this step may take: within the ramp of today's dispatch and the physical limit."""
        if self.tier == 0:
            return 0.0, 0.0
        upper = min(self.available_kw, self.dispatched_kw + self.ramp_kw)
        lower = min(max(0.0, self.dispatched_kw - self.ramp_kw), upper)
        return lower, upper


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """A command and where it goes (``device`` may be ``core.topics.SITE_TARGET``)."""

    site: str
    device: str
    command: Command


def _command(
    site: str, device: str, op: str, args: dict[str, float], hold_s: float, expires_at: datetime | None
) -> DeviceCommand:
    cmd = Command(
        id=f"dr-{uuid.uuid4().hex[:16]}",
        op=op,
        # kW -> W leaves float dust (523267.00000000006 W) that a device's integer limit rejects.
        args={name: round(value, 3) for name, value in args.items()},
        hold_s=hold_s,
        expires_at=expires_at,
        requested_by="dr_controller",
    )
    return DeviceCommand(site, device, cmd)


def _positive(value: float) -> float:
    return value if value > 0 else 0.0


@dataclass(frozen=True, slots=True)
class HydroUnit:
    """A small hydro unit with a reservoir; ``set_output_setpoint`` (W) in lixian-hydro-v1."""

    resource_id: str
    site: str
    rated_kw: float
    output_kw: float  # reference output when the event started
    inflow_kw: float  # power the natural inflow alone would sustain
    reservoir_kwh: float  # usable stored energy above the minimum level
    ramp_kw_per_min: float = UNLIMITED
    min_output_kw: float = 0.0
    cost_per_kwh: float = 0.3
    kind: ResourceKind = field(default=ResourceKind.HYDRO, init=False)

    def water_bound_kw(self, window: Window) -> float:
        """Output the water allows for the whole remaining window: inflow plus the reservoir drawn down."""
        return self.inflow_kw + self.reservoir_kwh / window.remaining_h

    def flexibility(self, direction: Direction, window: Window, dispatched_kw: float = 0.0) -> Flexibility:
        if direction is Direction.REDUCE:
            available = min(self.rated_kw, self.water_bound_kw(window)) - self.output_kw
        else:  # hold water back for later
            available = self.output_kw - self.min_output_kw
        return Flexibility(
            self.resource_id,
            self.kind,
            None,
            self.cost_per_kwh,
            _positive(available),
            dispatched_kw,
            self.ramp_kw_per_min * window.step_min,
        )

    def command(
        self, direction: Direction, dispatch_kw: float, hold_s: float, expires_at: datetime | None = None
    ) -> DeviceCommand:
        sign = 1.0 if direction is Direction.REDUCE else -1.0
        setpoint_kw = min(self.rated_kw, max(0.0, self.output_kw + sign * dispatch_kw))
        return _command(
            self.site,
            self.resource_id,
            "set_output_setpoint",
            {"watts": setpoint_kw * 1000},
            hold_s,
            expires_at,
        )

    def restore(self, hold_s: float, direction: Direction = Direction.REDUCE) -> DeviceCommand:
        """Back to the profile's default (rated: the unit follows its water again), either direction."""
        return _command(
            self.site, self.resource_id, "set_output_setpoint", {"watts": self.rated_kw * 1000}, hold_s, None
        )


@dataclass(frozen=True, slots=True)
class FlexibleLoad:
    """An industrial load with a curtailment setpoint (``set_curtailment``, W) and a load-raise setpoint
    (``set_load_raise``, W) in lixian-flexload-v1. Duration limits hold in either direction: a process
    can keep a changed schedule only so long."""

    resource_id: str
    site: str
    tier: int
    load_kw: float  # reference consumption when the event started (before any curtailment of ours)
    floor_kw: float  # the process cannot go below this
    max_curtailable_kw: float = UNLIMITED  # the device's limit (max_curtailable_w), or the agreed one
    min_duration_min: float = 0.0  # once curtailed, held at least this long (the dispatcher honours it)
    max_duration_min: float = UNLIMITED  # never curtailed longer than this in one event
    curtailed_for_min: float = 0.0  # how long it has been curtailed in this event
    rebound_fraction: float = 0.0  # share of the curtailed energy consumed again after release
    rebound_min: float = 60.0  # over how long the rebound comes back
    raisable_kw: float = 0.0  # extra load it can take on for valley filling (device and agreement)
    max_load_kw: float = UNLIMITED  # the ceiling a raise stops at (the site's contracted capacity)
    ramp_kw_per_min: float = UNLIMITED
    cost_per_kwh: float = 1.0
    kind: ResourceKind = field(default=ResourceKind.FLEXIBLE_LOAD, init=False)

    def _can_hold(self, window: Window) -> bool:
        # A load that cannot hold the rest of the window offers nothing: a release mid-event would
        # reopen the gap the event is closing.
        return self.tier != 0 and self.curtailed_for_min + window.remaining_min <= self.max_duration_min

    def curtailable_kw(self, window: Window) -> float:
        if not self._can_hold(window):
            return 0.0
        return _positive(min(self.load_kw - self.floor_kw, self.max_curtailable_kw))

    def raise_headroom_kw(self, window: Window) -> float:
        """What it can take on: its raisable power, below the ceiling (``load_kw`` is the load without
        our raise: from the raise the device reports, or pinned at the event's reference where the
        device reports none)."""
        if not self._can_hold(window):
            return 0.0
        return _positive(min(self.raisable_kw, self.max_load_kw - self.load_kw))

    def flexibility(self, direction: Direction, window: Window, dispatched_kw: float = 0.0) -> Flexibility:
        if direction is Direction.REDUCE:
            available = self.curtailable_kw(window)
        else:
            available = self.raise_headroom_kw(window)
        return Flexibility(
            self.resource_id,
            self.kind,
            self.tier,
            self.cost_per_kwh,
            available,
            dispatched_kw,
            self.ramp_kw_per_min * window.step_min,
        )

    def rebound(self, curtailed_kw: float, duration_min: float) -> tuple[float, float]:
        """(extra kW, for minutes) expected after release: the deferred production catching up."""
        energy_kwh = curtailed_kw * duration_min / 60.0 * self.rebound_fraction
        return energy_kwh / (self.rebound_min / 60.0), self.rebound_min

    def command(
        self, direction: Direction, dispatch_kw: float, hold_s: float, expires_at: datetime | None = None
    ) -> DeviceCommand:
        if self.tier == 0:
            raise ValueError(f"{self.resource_id} is tier 0: never curtailed nor raised")
        if direction is Direction.RAISE:
            watts = min(dispatch_kw, self.raisable_kw) * 1000
            return _command(
                self.site, self.resource_id, "set_load_raise", {"watts": watts}, hold_s, expires_at
            )
        watts = min(dispatch_kw, self.curtailable_kw(Window(1.0))) * 1000
        return _command(self.site, self.resource_id, "set_curtailment", {"watts": watts}, hold_s, expires_at)

    def restore(self, hold_s: float, direction: Direction = Direction.REDUCE) -> DeviceCommand:
        op = "set_load_raise" if direction is Direction.RAISE else "set_curtailment"
        return _command(self.site, self.resource_id, op, {"watts": 0.0}, hold_s, None)


@dataclass(frozen=True, slots=True)
class StorageUnit:
    """A battery; ``set_battery_power`` (W, + discharge / − charge) in sunspec-battery."""

    resource_id: str
    site: str
    capacity_kwh: float
    soc_pct: float
    power_kw: float  # reference operating point, + discharging / − charging
    discharge_limit_kw: float
    charge_limit_kw: float
    soc_min_pct: float = 10.0
    soc_max_pct: float = 95.0
    efficiency: float = 0.95  # one way, each direction
    ramp_kw_per_min: float = UNLIMITED
    cost_per_kwh: float = 0.5  # cycling wear
    kind: ResourceKind = field(default=ResourceKind.STORAGE, init=False)

    def max_discharge_kw(self, window: Window) -> float:
        energy_kwh = _positive(self.soc_pct - self.soc_min_pct) / 100 * self.capacity_kwh * self.efficiency
        return min(self.discharge_limit_kw, energy_kwh / window.remaining_h)

    def max_charge_kw(self, window: Window) -> float:
        headroom_kwh = _positive(self.soc_max_pct - self.soc_pct) / 100 * self.capacity_kwh / self.efficiency
        return min(self.charge_limit_kw, headroom_kwh / window.remaining_h)

    def flexibility(self, direction: Direction, window: Window, dispatched_kw: float = 0.0) -> Flexibility:
        if direction is Direction.REDUCE:  # from the operating point up to the most it can discharge
            available = self.max_discharge_kw(window) - self.power_kw
        else:
            available = self.max_charge_kw(window) + self.power_kw
        return Flexibility(
            self.resource_id,
            self.kind,
            None,
            self.cost_per_kwh,
            _positive(available),
            dispatched_kw,
            self.ramp_kw_per_min * window.step_min,
        )

    def command(
        self, direction: Direction, dispatch_kw: float, hold_s: float, expires_at: datetime | None = None
    ) -> DeviceCommand:
        sign = 1.0 if direction is Direction.REDUCE else -1.0
        power_kw = min(
            self.discharge_limit_kw, max(-self.charge_limit_kw, self.power_kw + sign * dispatch_kw)
        )
        return _command(
            self.site, self.resource_id, "set_battery_power", {"watts": power_kw * 1000}, hold_s, expires_at
        )

    def restore(self, hold_s: float, direction: Direction = Direction.REDUCE) -> DeviceCommand:
        return _command(self.site, self.resource_id, "set_battery_power", {"watts": 0.0}, hold_s, None)


@dataclass(frozen=True, slots=True)
class EvChargingSite:
    """A site's EV charging as one resource: a site-level limit through the OCPP central system."""

    resource_id: str  # the site key: the command goes to {site}/_site
    tier: int
    charging_kw: float  # reference charging power of all sessions when the event started
    floor_kw: float  # guaranteed to the sessions (e.g. the minimum current per connector)
    site_limit_kw: float  # the most the site's connection and piles allow
    ramp_kw_per_min: float = UNLIMITED
    cost_per_kwh: float = 0.8
    kind: ResourceKind = field(default=ResourceKind.EV_CHARGING, init=False)

    def flexibility(self, direction: Direction, window: Window, dispatched_kw: float = 0.0) -> Flexibility:
        if self.tier == 0:
            available = 0.0
        elif direction is Direction.REDUCE:
            available = self.charging_kw - self.floor_kw
        else:
            # A site limit only caps charging: lifting it makes no EV draw more, so there is nothing to
            # promise for valley filling (the sessions' own demand is what it is).
            available = 0.0
        return Flexibility(
            self.resource_id,
            self.kind,
            self.tier,
            self.cost_per_kwh,
            _positive(available),
            dispatched_kw,
            self.ramp_kw_per_min * window.step_min,
        )

    def command(
        self, direction: Direction, dispatch_kw: float, hold_s: float, expires_at: datetime | None = None
    ) -> DeviceCommand:
        sign = -1.0 if direction is Direction.REDUCE else 1.0
        limit_kw = min(self.site_limit_kw, max(self.floor_kw, self.charging_kw + sign * dispatch_kw))
        # ocpp_server.smart: a site-level smart-charging limit, spread over the site's piles.
        return _command(
            self.resource_id,
            SITE_TARGET,
            "set_site_charging_limit",
            {"watts": limit_kw * 1000},
            hold_s,
            expires_at,
        )

    def restore(self, hold_s: float, direction: Direction = Direction.REDUCE) -> DeviceCommand:
        """Lift the site limit altogether (ocpp_server.smart's clear_site_charging_limit)."""
        return _command(self.resource_id, SITE_TARGET, "clear_site_charging_limit", {}, hold_s, None)


@runtime_checkable
class Resource(Protocol):
    """What the controller needs of a resource model: its capacity and its commands."""

    @property
    def resource_id(self) -> str: ...

    @property
    def kind(self) -> ResourceKind: ...

    def flexibility(
        self, direction: Direction, window: Window, dispatched_kw: float = 0.0
    ) -> Flexibility: ...

    def command(
        self, direction: Direction, dispatch_kw: float, hold_s: float, expires_at: datetime | None = None
    ) -> DeviceCommand: ...

    def restore(self, hold_s: float, direction: Direction = Direction.REDUCE) -> DeviceCommand:
        """The command back to the device's default after an event of ``direction``."""
        ...


class ResourceMeter(Protocol):
    """Where live state comes from (telemetry latest values): a fresh resource model per measurement."""

    async def measure(self, resource_id: str) -> Resource: ...
