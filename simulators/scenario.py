"""Scenario files: who owns what, where, and which simulated devices run there (YAML in ``scenarios/``).

The lead's CLI seeds the registry from ``tenants``/``sites``/``devices`` and builds the gateway's device
list from ``devices`` plus the fleet's endpoints; ``sim`` holds the physics parameters, checked here
per device kind so a typo fails at load time, not at the first poll.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from core.towns import TOWN_KEYS
from simulators.ocpp.spec import PileSpec

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def _known_town(key: str) -> str:
    if key not in TOWN_KEYS:
        raise ValueError(f"unknown town {key!r}; the county's towns are {', '.join(TOWN_KEYS)}")
    return key


TownKey = Annotated[str, AfterValidator(_known_town)]
DeviceKind = Literal["pv_inverter", "battery", "meter", "hydro", "load", "charge_point", "other"]
# The register map each simulated kind serves; other kinds (charge points) are not Modbus devices.
PROFILE_OF_KIND: dict[str, str] = {
    "pv_inverter": "sunspec-pv-inverter",
    "battery": "sunspec-battery",
    "meter": "sunspec-meter",
    "hydro": "lixian-hydro-v1",
    "load": "lixian-flexload-v1",
}
MODBUS_KINDS = frozenset(PROFILE_OF_KIND)
SCENARIO_DIR = Path(__file__).parent / "scenarios"
# Charge points are OCPP piles: ``sim`` is their simulator's PileSpec (version, connectors, fast,
# max_power_w, arrivals_per_day, password, ...), checked at load time like the other kinds' physics.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Physics parameters by device kind (all optional: defaults scale with the device's rated power).
class PvSim(_Strict):
    tilt_deg: float = Field(default=20.0, ge=0, le=90)
    azimuth_deg: float = Field(default=180.0, ge=0, lt=360)
    dc_ac_ratio: float = Field(default=1.15, gt=0, le=2)
    derate: float = Field(default=0.88, gt=0, le=1)
    cloud_mean: float = Field(default=0.85, gt=0, le=1)
    cloud_sigma: float = Field(default=0.12, ge=0, le=1)
    cloud_tau_s: float = Field(default=600.0, gt=0)
    nominal_dc_v: float = Field(default=620.0, gt=0)
    nominal_v: float | None = Field(default=None, gt=0)
    energy_wh: float = Field(default=0.0, ge=0)
    seed: int | None = None


class BatterySim(_Strict):
    capacity_wh: float | None = Field(default=None, gt=0)  # default: 2 h at rated power
    max_charge_w: float | None = Field(default=None, gt=0)  # default: rated power
    max_discharge_w: float | None = Field(default=None, gt=0)
    round_trip_efficiency: float = Field(default=0.92, gt=0, le=1)
    soc_min_pct: float = Field(default=5.0, ge=0, le=100)
    soc_max_pct: float = Field(default=98.0, ge=0, le=100)
    initial_soc_pct: float = Field(default=50.0, ge=0, le=100)
    soh_pct: float = Field(default=97.0, ge=0, le=100)
    nominal_dc_v: float = Field(default=768.0, gt=0)
    local_schedule: bool = True
    seed: int | None = None


class MeterSim(_Strict):
    role: Literal["grid_connection", "transformer", "feeder"] = "grid_connection"
    peak_load_w: float | None = Field(default=None, ge=0)  # the meter's own load; default: rated power
    shape: Literal["two_shift", "one_shift", "continuous", "town", "essential", "flat"] = "two_shift"
    power_factor: float = Field(default=0.95, gt=0, le=1)
    nominal_v: float | None = Field(default=None, gt=0)
    # Add the other simulated devices of the same site to the meter's own load (loads +, generation -).
    aggregate_site: bool = True
    energy_import_wh: float = Field(default=0.0, ge=0)
    energy_export_wh: float = Field(default=0.0, ge=0)
    seed: int | None = None


class HydroSim(_Strict):
    head_m: float = Field(default=35.0, gt=0)
    efficiency: float = Field(default=0.86, gt=0, le=1)
    reservoir_area_m2: float = Field(default=40_000.0, gt=0)
    min_level_m: float = Field(default=1.0, ge=0)
    max_level_m: float = Field(default=6.0, gt=0)
    initial_level_m: float = Field(default=4.0, ge=0)
    mean_inflow_m3s: float | None = Field(default=None, gt=0)
    inflow_sigma: float = Field(default=0.08, ge=0, le=1)
    typical_output_w: float | None = Field(default=None, ge=0)  # default: 45 % of rated
    ramp_kw_per_min: float | None = Field(default=None, ge=1, le=10_000)
    nominal_v: float | None = Field(default=None, gt=0)
    energy_wh: float = Field(default=0.0, ge=0)
    seed: int | None = None


class LoadSim(_Strict):
    shape: Literal["two_shift", "one_shift", "continuous", "essential", "flat"] = "two_shift"
    floor_w: float | None = Field(default=None, ge=0)  # default: 35 % of rated
    max_curtailable_w: float | None = Field(default=None, ge=0)  # default: 40 % of rated
    # Valley filling: the most a load-raise setpoint may add (default: 30 % of rated), and the ceiling a
    # raise stops at, the site's contracted capacity for this load (default: rated).
    max_raisable_w: float | None = Field(default=None, ge=0)
    max_load_w: float | None = Field(default=None, gt=0)
    power_factor: float = Field(default=0.90, gt=0, le=1)
    nominal_v: float | None = Field(default=None, gt=0)
    noise: float = Field(default=0.02, ge=0, le=0.2)
    energy_wh: float = Field(default=0.0, ge=0)
    seed: int | None = None


SIM_MODEL_OF_KIND: dict[str, type[_Strict]] = {
    "pv_inverter": PvSim,
    "battery": BatterySim,
    "meter": MeterSim,
    "hydro": HydroSim,
    "load": LoadSim,
}


class Tenant(_Strict):
    key: Slug
    name: str
    kind: Literal["operator", "grid", "park", "county"]


class Site(_Strict):
    key: Slug
    name: str
    tenant: Slug | None = None
    town: TownKey
    kind: Literal["park", "hydro", "substation", "charging", "industrial", "public"] = "park"
    tier: int = Field(default=3, ge=0, le=9)
    feeder: str | None = None
    latitude: float = Field(default=29.63, ge=-90, le=90)
    longitude: float = Field(default=111.76, ge=-180, le=180)


class Device(_Strict):
    key: Slug
    site: Slug
    kind: DeviceKind
    profile: str
    vendor: str | None = None
    model: str | None = None
    rated_power_w: float = Field(gt=0)
    tier: int | None = Field(default=None, ge=0, le=9)
    unit_id: int = Field(default=1, ge=1, le=247)
    sim: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Device:
        expected = PROFILE_OF_KIND.get(self.kind)
        if expected is not None and self.profile != expected:
            raise ValueError(f"device {self.key}: kind {self.kind} is simulated as profile {expected!r}")
        self.sim_params()  # validates the physics parameters now
        return self

    def sim_params(self) -> Any:
        """``sim`` parsed into the kind's parameter model (PvSim, BatterySim, ..., and for a charge point
        the simulated pile's ``PileSpec``: its id is the device key, its maximum the rated power)."""
        if self.kind == "charge_point":
            return self.pile_spec()
        sim_model = SIM_MODEL_OF_KIND.get(self.kind)
        return sim_model.model_validate(self.sim) if sim_model is not None else None

    def pile_spec(self) -> PileSpec:
        if self.kind != "charge_point":
            raise ValueError(f"device {self.key} is not a charge point")
        fields: dict[str, Any] = {"id": self.key, "site": self.site, "max_power_w": self.rated_power_w}
        if self.vendor:
            fields["vendor"] = self.vendor
        if self.model:
            fields["model"] = self.model
        spec = PileSpec.model_validate({**fields, **self.sim})
        if spec.id != self.key or spec.site != self.site:
            raise ValueError(f"device {self.key}: a pile's id and site are the device's key and site")
        if spec.password is None:
            raise ValueError(f"device {self.key}: a charge point needs sim.password (HTTP Basic auth)")
        return spec


class Scenario(_Strict):
    name: str
    description: str = ""
    time_factor: float = Field(default=1.0, gt=0)
    start: AwareDatetime | None = None
    tenants: list[Tenant] = Field(default_factory=list)
    sites: list[Site] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_references(self) -> Scenario:
        for what, keys in (
            ("tenant", [t.key for t in self.tenants]),
            ("site", [s.key for s in self.sites]),
            ("device", [d.key for d in self.devices]),
        ):
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} keys: {', '.join(dupes)}")
        tenants = {t.key for t in self.tenants}
        for s in self.sites:
            if s.tenant is not None and s.tenant not in tenants:
                raise ValueError(f"site {s.key}: unknown tenant {s.tenant!r}")
        sites = {s.key for s in self.sites}
        for d in self.devices:
            if d.site not in sites:
                raise ValueError(f"device {d.key}: unknown site {d.site!r}")
        return self

    def site(self, key: str) -> Site:
        for s in self.sites:
            if s.key == key:
                return s
        raise KeyError(key)

    @property
    def modbus_devices(self) -> list[Device]:
        return [d for d in self.devices if d.kind in MODBUS_KINDS]

    @property
    def charge_points(self) -> list[Device]:
        return [d for d in self.devices if d.kind == "charge_point"]

    def modbus_part(self) -> Scenario:
        """The scenario with its Modbus devices only (what a Modbus fleet serves)."""
        return self.model_copy(update={"devices": self.modbus_devices})

    def pile_specs(self) -> list[PileSpec]:
        """The simulated piles of the scenario's charge points."""
        return [d.pile_spec() for d in self.charge_points]


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A scenario by name (``simulators/scenarios/{name}.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        # Next to this module, not importlib.resources: also works for namespace-style editable installs.
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            available = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no scenario {name_or_path!r}; available: {', '.join(available)}")
    return Scenario.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def peak_shaving_capacity_w(scenario: Scenario) -> dict[str, float]:
    """Power the county can take off its evening peak, by source.

    Hydro: rated minus typical output (the headroom a held-back unit can add); loads: the curtailable
    power at the profile's peak (limited by the process floor); batteries: rated discharge (reported
    separately: it lasts only as long as the charge).
    """
    hydro = load = battery = 0.0
    for d in scenario.devices:
        params = d.sim_params()
        if isinstance(params, HydroSim):
            typical = (
                params.typical_output_w if params.typical_output_w is not None else 0.45 * d.rated_power_w
            )
            hydro += max(0.0, d.rated_power_w - typical)
        elif isinstance(params, LoadSim):
            floor = params.floor_w if params.floor_w is not None else 0.35 * d.rated_power_w
            cap = params.max_curtailable_w if params.max_curtailable_w is not None else 0.40 * d.rated_power_w
            load += max(0.0, min(cap, d.rated_power_w - floor))
        elif isinstance(params, BatterySim):
            battery += params.max_discharge_w or d.rated_power_w
    return {"hydro_w": hydro, "load_w": load, "battery_w": battery, "hydro_and_load_w": hydro + load}
