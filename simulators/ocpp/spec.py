"""What a simulated pile is: ``PileSpec`` (pydantic, strict) and generators for fleets and scenario files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

OcppVersion = Literal["1.6", "2.0.1"]
SUBPROTOCOL: dict[str, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
PileId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}$")]


class PileSpec(BaseModel):
    """One charge point. Intervals marked *sim* are in simulated seconds (they follow the SimClock's time
    factor); heartbeat and boot-retry intervals come from the server and are real seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: PileId
    version: OcppVersion = "1.6"
    password: str | None = None  # HTTP Basic (security profile 1/2); None sends no Authorization header
    connectors: int = Field(default=1, ge=1, le=8)
    fast: bool = False  # DC fast charger (else AC slow)
    max_power_w: float = Field(default=7_000.0, gt=0)  # the whole pile
    connector_max_w: float | None = Field(default=None, gt=0)  # default: max_power_w
    voltage_v: float | None = Field(default=None, gt=0)  # default: 230 V AC per phase, 500 V DC
    phases: int | None = Field(default=None, ge=1, le=3)  # default: 1 (7 kW AC, DC), 3 above 7.4 kW AC
    vendor: str = "Lishui Sim"
    model: str | None = None
    firmware: str = "sim-1.0"
    site: str | None = None  # scenario site key, for seeding the registry
    arrivals_per_day: float = Field(default=0.0, ge=0)  # per connector; 0: EVs only when plugged by hand
    flat_arrivals: bool = False  # constant rate instead of the daily shape
    meter_interval_s: float = Field(default=60.0, gt=0)  # *sim* MeterValueSampleInterval
    idle_meter_values: bool = False  # also send MeterValues with no transaction (the bench does)
    id_tokens: tuple[str, ...] = ()  # tokens the drivers present (default: a random one per EV)
    # First heartbeat at a random phase of its interval (a fleet that booted at different times), not a
    # full interval after this boot.
    stagger: bool = False
    offline_tx: bool = True  # start transactions while offline (queued, replayed on reconnect)
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> PileSpec:
        if self.connector_max_w is not None and self.connector_max_w > self.max_power_w:
            raise ValueError(f"pile {self.id}: connector_max_w above max_power_w")
        return self

    @property
    def subprotocol(self) -> str:
        return SUBPROTOCOL[self.version]

    @property
    def per_connector_w(self) -> float:
        return self.connector_max_w or self.max_power_w

    @property
    def volts(self) -> float:
        return self.voltage_v or (500.0 if self.fast else 230.0)

    @property
    def n_phases(self) -> int:
        if self.phases is not None:
            return self.phases
        return 1 if self.fast or self.per_connector_w <= 7_400.0 else 3

    @property
    def model_name(self) -> str:
        return self.model or f"SIM-{'DC' if self.fast else 'AC'}-{self.max_power_w / 1000:g}K"


def generate_piles(
    count: int,
    *,
    prefix: str = "sim-cp",
    version: OcppVersion | Literal["mixed"] = "mixed",
    fast_share: float = 0.3,
    password: str | None = None,
    site: str | None = None,
    **overrides: Any,
) -> list[PileSpec]:
    """``count`` piles: slow 7 kW AC single-connector and fast 60/120 kW DC dual-connector ones
    (every ``1/fast_share``-th), alternating versions when ``mixed``."""
    step = round(1 / fast_share) if fast_share > 0 else 0
    out: list[PileSpec] = []
    for i in range(count):
        fast = step > 0 and i % step == step - 1
        ver: OcppVersion = version if version != "mixed" else ("1.6" if i % 2 == 0 else "2.0.1")
        fields: dict[str, Any] = {
            "id": f"{prefix}-{i + 1:05d}",
            "version": ver,
            "password": password,
            "site": site,
            "fast": fast,
            "connectors": 2 if fast else 1,
            "max_power_w": (120_000.0 if i % 2 else 60_000.0) if fast else 7_000.0,
            "arrivals_per_day": 8.0 if fast else 2.0,
            "seed": i,
        }
        fields.update(overrides)
        out.append(PileSpec(**fields))
    return out


def load_piles(path: str | Path) -> list[PileSpec]:
    """Piles from a YAML file: ``piles: [{id: ..., version: ...}, ...]`` (``scenarios/piles-*.yaml``)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [PileSpec.model_validate(p) for p in data.get("piles", [])]


def piles_yaml(piles: list[PileSpec]) -> str:
    """The ``piles:`` section for a scenario-side file (defaults left out, so the file stays short)."""
    rows = [p.model_dump(mode="json", exclude_defaults=True) for p in piles]
    return yaml.safe_dump({"piles": rows}, allow_unicode=True, sort_keys=False)
