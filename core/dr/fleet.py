"""Resource models from the registry and live telemetry: which devices an event may use, and what each
can give now.

Devices come from ``devices`` (operating, in the event's scope); a device's tier is its own override or
its site's. Live state is the latest reading of each needed metric from ``telemetry``, no older than
``max_age_s`` (wall clock): a device without a fresh ``active_power_w`` is left out (``stale``), never
modelled from old data.

What the registry does not know comes from ``devices.attributes`` (JSON), with these defaults (the
simulators' defaults, so a county seeded without attributes is modelled as it behaves):

- hydro (``lixian-hydro-v1``): ``head_m`` 35, ``efficiency`` 0.86, ``reservoir_area_m2`` 40000,
  ``min_level_m`` 1.0, ``ramp_kw_per_min`` 20 % of rated, ``min_output_w`` 0, ``cost_per_kwh`` 0.3;
- flexible load (``lixian-flexload-v1``, or ``curtailable: true``): ``floor_w`` 35 % of rated,
  ``max_curtailable_w`` 40 % of rated, ``min_duration_min`` 0, ``max_duration_min`` unlimited,
  ``rebound_fraction`` 0, ``raisable_w`` 30 % of rated (0 unless the profile is lixian-flexload-v1,
  which has the raise control), ``max_load_w`` rated (the ceiling of a raise), ``cost_per_kwh`` 1.0.
  Where the device reports its own limits (telemetry ``max_curtailable_w``, ``max_raisable_w``) they
  bound the attributes (an agreement may offer less than the device can do, never more); without
  an attribute the reported limit stands alone, without either the default;
- storage (kind ``battery``): ``capacity_wh`` (else telemetry ``energy_capacity_wh``, else 2 h at
  rated), ``soc_min_pct`` 10, ``soc_max_pct`` 95, ``efficiency`` 0.95, ``cost_per_kwh`` 0.5;
- EV charging (``charge_point`` devices, grouped per site; only where the OCPP central system reports
  them): ``min_charging_w`` 0 per charge point, ``cost_per_kwh`` 0.8.

Devices of tier 0 (protected users) are never resources at all: not curtailed, not touched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.dr.resources import (
    UNLIMITED,
    DeviceCommand,
    Direction,
    EvChargingSite,
    FlexibleLoad,
    HydroUnit,
    Resource,
    ResourceKind,
    StorageUnit,
)
from core.metrics import metric

__all__ = [
    "DeviceInfo",
    "FleetSnapshot",
    "LiveState",
    "ScopeFilter",
    "TelemetryMeter",
    "build_resources",
    "load_devices",
    "read_average_power",
    "read_latest",
    "restore_command",
]

RHO_G = 1000.0 * 9.81
FLEXLOAD_PROFILE = "lixian-flexload-v1"
HYDRO_PROFILE = "lixian-hydro-v1"
LIVE_METRICS = (
    "active_power_w",
    "curtailment_w",
    "reservoir_level_m",
    "inflow_m3s",
    "soc_pct",
    "charge_limit_w",
    "discharge_limit_w",
    "energy_capacity_wh",
    "active_power_setpoint_w",
    "load_raise_w",
    "max_raisable_w",
    "max_curtailable_w",
)
_METRIC_IDS = {metric(name).id: name for name in LIVE_METRICS}


@dataclass(frozen=True, slots=True)
class ScopeFilter:
    """Which sites an event covers: all (county), one town, one feeder, or named sites."""

    town_id: int | None = None
    feeder: str | None = None
    site_ids: tuple[int, ...] | None = None

    @classmethod
    def from_event(cls, row: Mapping[str, Any]) -> ScopeFilter:
        sites = row.get("site_ids")
        return cls(row.get("town_id"), row.get("feeder"), tuple(sites) if sites else None)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: int
    key: str
    site: str
    site_id: int
    kind: str
    profile: str | None
    rated_w: float
    tier: int
    town: str | None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def attr(self, name: str, default: float) -> float:
        value = self.attr_or_none(name)
        return default if value is None else value

    def attr_or_none(self, name: str) -> float | None:
        value = self.attributes.get(name)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    @property
    def resource_kind(self) -> ResourceKind | None:
        if self.kind == "hydro" and self.profile in (HYDRO_PROFILE, None):
            return ResourceKind.HYDRO
        if self.kind == "load" and (self.profile == FLEXLOAD_PROFILE or self.attributes.get("curtailable")):
            return ResourceKind.FLEXIBLE_LOAD
        if self.kind == "battery":
            return ResourceKind.STORAGE
        if self.kind == "charge_point":
            return ResourceKind.EV_CHARGING
        return None


async def load_devices(conn: psycopg.AsyncConnection[Any], scope: ScopeFilter) -> list[DeviceInfo]:
    """Operating devices of the kinds that can respond, in scope, with their effective tier."""
    clauses = ["d.lifecycle = 'operating'", "d.kind IN ('hydro', 'load', 'battery', 'charge_point')"]
    params: list[Any] = []
    if scope.town_id is not None:
        clauses.append("s.town_id = %s")
        params.append(scope.town_id)
    if scope.feeder is not None:
        clauses.append("s.feeder = %s")
        params.append(scope.feeder)
    if scope.site_ids is not None:
        clauses.append("s.id = ANY(%s)")
        params.append(list(scope.site_ids))
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT d.id, d.key, s.key AS site, s.id AS site_id, d.kind, d.profile,"
            " coalesce(d.rated_power_w, 0) AS rated_w, coalesce(d.tier, s.tier) AS tier,"
            " t.key AS town, d.attributes"
            " FROM devices d JOIN sites s ON s.id = d.site_id LEFT JOIN towns t ON t.id = s.town_id"
            f" WHERE {' AND '.join(clauses)} ORDER BY d.id",
            params,
        )
        rows = await cur.fetchall()
    return [DeviceInfo(**row) for row in rows]


LiveState = dict[int, dict[str, float]]  # device id -> metric name -> latest value


async def read_latest(
    conn: psycopg.AsyncConnection[Any], device_ids: Iterable[int], max_age_s: float
) -> LiveState:
    """The latest fresh value of each live metric per device: one index probe per (device, metric)."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    cur = await conn.execute(
        "SELECT d.id, m.id, t.value FROM unnest(%s::integer[]) AS d(id)"
        " CROSS JOIN unnest(%s::smallint[]) AS m(id)"
        " CROSS JOIN LATERAL (SELECT value FROM telemetry"
        "   WHERE device_id = d.id AND metric_id = m.id AND ts > now() - make_interval(secs => %s)"
        "   ORDER BY ts DESC LIMIT 1) t",
        (ids, list(_METRIC_IDS), max_age_s),
    )
    live: LiveState = defaultdict(dict)
    for device_id, metric_id, value in await cur.fetchall():
        live[device_id][_METRIC_IDS[metric_id]] = float(value)
    return dict(live)


async def read_average_power(
    conn: psycopg.AsyncConnection[Any], device_ids: Iterable[int], window_s: float
) -> dict[int, float]:
    """Each device's mean ``active_power_w`` (kW) over the last ``window_s`` wall seconds."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    cur = await conn.execute(
        "SELECT device_id, avg(value) / 1000.0 FROM telemetry WHERE device_id = ANY(%s) AND metric_id = %s"
        " AND ts > now() - make_interval(secs => %s) GROUP BY device_id",
        (ids, metric("active_power_w").id, window_s),
    )
    return {int(d): float(kw) for d, kw in await cur.fetchall()}


def _hydro(d: DeviceInfo, live: Mapping[str, float], output_kw: float) -> HydroUnit:
    rated_kw = d.rated_w / 1000
    head = d.attr("head_m", 35.0)
    eff = d.attr("efficiency", 0.86)
    area = d.attr("reservoir_area_m2", 40_000.0)
    min_level = d.attr("min_level_m", 1.0)
    level = live.get("reservoir_level_m", min_level)
    kw_per_m3s = RHO_G * (head + level) * eff / 1000
    return HydroUnit(
        resource_id=d.key,
        site=d.site,
        rated_kw=rated_kw,
        output_kw=output_kw,
        inflow_kw=live.get("inflow_m3s", 0.0) * kw_per_m3s,
        reservoir_kwh=max(0.0, level - min_level) * area * kw_per_m3s / 3600,
        ramp_kw_per_min=d.attr("ramp_kw_per_min", 0.2 * rated_kw),
        min_output_kw=d.attr("min_output_w", 0.0) / 1000,
        cost_per_kwh=d.attr("cost_per_kwh", 0.3),
    )


def _limit_w(
    d: DeviceInfo, live: Mapping[str, float], attribute: str, reported: str, default: float
) -> float:
    """A limit from the agreed attribute and the device's own report: the lower of the two where both
    are known, either alone, else the default."""
    values = [
        v for v in (d.attr_or_none(attribute), live.get(reported)) if v is not None and math.isfinite(v)
    ]
    return max(0.0, min(values)) if values else default


def _flexible_load(
    d: DeviceInfo, live: Mapping[str, float], curtailed_for_min: float, reference_kw: float | None
) -> FlexibleLoad:
    # The device reports what it holds back (curtailment_w) and what it takes on (load_raise_w):
    # measured + held back - taken on is its load had we commanded nothing, which follows the
    # production profile through the event. A device that does not report its raise is pinned at the
    # event's reference by the controller while raising (``reference_kw``).
    load_kw = (live["active_power_w"] + live.get("curtailment_w", 0.0) - live.get("load_raise_w", 0.0)) / 1000
    if reference_kw is not None:
        load_kw = reference_kw
    raisable_default = 0.30 * d.rated_w if d.profile == FLEXLOAD_PROFILE else 0.0
    return FlexibleLoad(
        resource_id=d.key,
        site=d.site,
        tier=d.tier,
        load_kw=load_kw,
        floor_kw=d.attr("floor_w", 0.35 * d.rated_w) / 1000,
        max_curtailable_kw=_limit_w(d, live, "max_curtailable_w", "max_curtailable_w", 0.40 * d.rated_w)
        / 1000,
        min_duration_min=d.attr("min_duration_min", 0.0),
        max_duration_min=d.attr("max_duration_min", UNLIMITED),
        curtailed_for_min=curtailed_for_min,
        rebound_fraction=d.attr("rebound_fraction", 0.0),
        raisable_kw=_limit_w(d, live, "raisable_w", "max_raisable_w", raisable_default) / 1000,
        max_load_kw=d.attr("max_load_w", d.rated_w) / 1000,
        cost_per_kwh=d.attr("cost_per_kwh", 1.0),
    )


def _storage(d: DeviceInfo, live: Mapping[str, float], power_kw: float) -> StorageUnit:
    rated_kw = d.rated_w / 1000
    capacity_wh = d.attr("capacity_wh", live.get("energy_capacity_wh", 2 * d.rated_w))
    return StorageUnit(
        resource_id=d.key,
        site=d.site,
        capacity_kwh=capacity_wh / 1000,
        soc_pct=live.get("soc_pct", 0.0),
        power_kw=power_kw,
        discharge_limit_kw=min(rated_kw, live.get("discharge_limit_w", d.rated_w) / 1000),
        charge_limit_kw=min(rated_kw, live.get("charge_limit_w", d.rated_w) / 1000),
        soc_min_pct=d.attr("soc_min_pct", 10.0),
        soc_max_pct=d.attr("soc_max_pct", 95.0),
        efficiency=d.attr("efficiency", 0.95),
        cost_per_kwh=d.attr("cost_per_kwh", 0.5),
    )


def _ev_sites(
    chargers: list[DeviceInfo], live: LiveState, references: Mapping[str, float]
) -> list[EvChargingSite]:
    by_site: dict[str, list[DeviceInfo]] = defaultdict(list)
    for d in chargers:
        by_site[d.site].append(d)
    sites = []
    for site, devices in sorted(by_site.items()):
        charging_kw = sum(live[d.id]["active_power_w"] for d in devices) / 1000
        sites.append(
            EvChargingSite(
                resource_id=site,
                tier=min(d.tier for d in devices),
                charging_kw=references.get(site, charging_kw),
                floor_kw=sum(d.attr("min_charging_w", 0.0) for d in devices) / 1000,
                site_limit_kw=sum(d.rated_w for d in devices) / 1000,
                cost_per_kwh=devices[0].attr("cost_per_kwh", 0.8),
            )
        )
    return sites


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The resources of a scope now, with what was left out and why."""

    resources: dict[str, Resource]
    devices: dict[str, DeviceInfo]  # resource id -> its device (EV sites: their first charge point)
    live: LiveState
    excluded: dict[str, str]  # device key -> reason (stale, protected, not controllable)

    def measured_kw(self, resource_id: str) -> float:
        """A resource's measured power now (kW, core.metrics sign of its kind)."""
        resource = self.resources[resource_id]
        if isinstance(resource, EvChargingSite):
            return sum(
                self.live[d.id]["active_power_w"] / 1000
                for d in self.devices.values()
                if d.kind == "charge_point" and d.site == resource_id and d.id in self.live
            )
        return self.live[self.devices[resource_id].id]["active_power_w"] / 1000

    def reported_response_kw(self, resource_id: str, direction: Direction) -> float | None:
        """What a flexible load itself reports giving in ``direction`` (kW): the curtailment in force
        less the raise for peak shaving, the raise less the curtailment for valley filling. None when
        it is not a flexible load or does not report that direction's metric (``curtailment_w``,
        ``load_raise_w``): then only measurement against a reference can tell."""
        if not isinstance(self.resources.get(resource_id), FlexibleLoad):
            return None
        live = self.live.get(self.devices[resource_id].id, {})
        given, taken = ("curtailment_w", "load_raise_w")
        if direction is Direction.RAISE:
            given, taken = taken, given
        if given not in live:
            return None
        return (live[given] - live.get(taken, 0.0)) / 1000


def build_resources(
    devices: Iterable[DeviceInfo],
    live: LiveState,
    references: Mapping[str, float] | None = None,
    curtailed_for_min: Mapping[str, float] | None = None,
) -> FleetSnapshot:
    """Resource models now. ``references`` (resource id -> kW at the event's activation) pins the
    operating point of generators, storage and EV sites (and of a flexible load, for valley filling);
    without it the present measurement is used."""
    references = references or {}
    curtailed_for_min = curtailed_for_min or {}
    resources: dict[str, Resource] = {}
    by_resource: dict[str, DeviceInfo] = {}
    excluded: dict[str, str] = {}
    chargers: list[DeviceInfo] = []
    for d in devices:
        kind = d.resource_kind
        if kind is None:
            excluded[d.key] = "not controllable"
            continue
        if d.tier == 0:
            excluded[d.key] = "tier 0 (protected)"
            continue
        state = live.get(d.id, {})
        if "active_power_w" not in state:
            excluded[d.key] = "stale"
            continue
        measured_kw = state["active_power_w"] / 1000
        reference = references.get(d.key, measured_kw)
        model: Resource
        if kind is ResourceKind.HYDRO:
            model = _hydro(d, state, reference)
        elif kind is ResourceKind.FLEXIBLE_LOAD:
            model = _flexible_load(d, state, curtailed_for_min.get(d.key, 0.0), references.get(d.key))
        elif kind is ResourceKind.STORAGE:
            model = _storage(d, state, reference)
        else:
            chargers.append(d)
            continue
        resources[d.key] = model
        by_resource[d.key] = d
    for ev in _ev_sites(chargers, live, references):
        resources[ev.resource_id] = ev
        by_resource[ev.resource_id] = next(d for d in chargers if d.site == ev.resource_id)
    return FleetSnapshot(resources, by_resource, live, excluded)


class TelemetryMeter:
    """``resources.ResourceMeter`` over the database: a fresh resource model per measurement."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], scope: ScopeFilter, max_age_s: float) -> None:
        self._conn = conn
        self._scope = scope
        self._max_age_s = max_age_s

    async def snapshot(self, references: Mapping[str, float] | None = None) -> FleetSnapshot:
        devices = await load_devices(self._conn, self._scope)
        live = await read_latest(self._conn, (d.id for d in devices), self._max_age_s)
        return build_resources(devices, live, references)

    async def measure(self, resource_id: str) -> Resource:
        snap = await self.snapshot()
        try:
            return snap.resources[resource_id]
        except KeyError:
            reason = snap.excluded.get(resource_id, "not in scope")
            raise LookupError(f"resource {resource_id!r} unavailable: {reason}") from None


def restore_command(
    d: DeviceInfo, resource_id: str, hold_s: float, direction: Direction = Direction.REDUCE
) -> DeviceCommand | None:
    """The command putting a resource back to its default after an event of ``direction``, from the
    registry alone (a device that stopped reporting is restored all the same)."""
    kind = d.resource_kind
    rated_kw = d.rated_w / 1000
    if kind is ResourceKind.HYDRO:
        return HydroUnit(resource_id, d.site, rated_kw, 0.0, 0.0, 0.0).restore(hold_s, direction)
    if kind is ResourceKind.FLEXIBLE_LOAD:
        return FlexibleLoad(resource_id, d.site, d.tier, 0.0, 0.0).restore(hold_s, direction)
    if kind is ResourceKind.STORAGE:
        return StorageUnit(resource_id, d.site, 0.0, 0.0, 0.0, 0.0, 0.0).restore(hold_s, direction)
    if kind is ResourceKind.EV_CHARGING:
        return EvChargingSite(resource_id, d.tier, 0.0, 0.0, 0.0).restore(hold_s, direction)
    return None
