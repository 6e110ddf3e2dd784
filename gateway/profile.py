"""Device profiles as data: what to read from a kind of device, how to decode it into catalogue metrics,
and which setpoints it accepts. Shipped profiles live in gateway/profiles/*.yaml.

A limit or default of a control is either a number or a *reference*: the name of a value the device
reports (a catalogue metric such as ``rated_power_w`` or a register name), optionally negated with a
leading ``-``. It is resolved against the device's latest poll.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core import sunspec
from core.metrics import BY_NAME
from gateway.errors import ProfileError

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64"]
REGISTER_SIZE: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
}
LimitValue = float | str  # a number or a reference to a reported value


class Protocol(StrEnum):
    MODBUS = "modbus"
    SUNSPEC = "sunspec"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Register(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    address: int = Field(ge=0, le=0xFFFF)
    table: Literal["holding", "input"] = "holding"
    type: RegisterType = "uint16"
    word_order: Literal["big", "little"] = "big"  # "little": low word first
    scale: float | None = None  # value = raw * scale
    scale_register: int | None = None  # address of an int16 SunSpec-style exponent: raw * 10**sf
    unit: str | None = None  # unit after scaling
    metric: str | None = None  # catalogue metric to publish; none = read for limits/readback only
    poll: bool = True  # false: write-only for the gateway (never read in polls)

    @property
    def size(self) -> int:
        return REGISTER_SIZE[self.type]

    @model_validator(mode="after")
    def _one_scale(self) -> Register:
        if self.scale is not None and self.scale_register is not None:
            raise ValueError(f"register {self.name}: give scale or scale_register, not both")
        return self


class ModbusMap(_Strict):
    registers: list[Register] = Field(min_length=1)
    # Address ranges (inclusive) known to answer reads even where no register is listed: the read planner
    # may read across them. Unlisted, unknown addresses are never read (vendor maps answer exception 02).
    known_mapped: list[tuple[int, int]] = Field(default_factory=list)
    max_gap: int = Field(8, ge=0)  # largest known-mapped gap worth reading through to save a request


class PointMapping(_Strict):
    point: str = Field(pattern=r"^\d+\.[A-Za-z0-9_]+$")  # "model.point", e.g. "103.W"
    metric: str
    multiplier: float = 1.0  # after the scale factor, e.g. 0.01 for SunSpec "Pct" power factor

    @property
    def model_id(self) -> int:
        return int(self.point.split(".", 1)[0])

    @property
    def point_name(self) -> str:
        return self.point.split(".", 1)[1]


class SunSpecMap(_Strict):
    models: list[int] = Field(min_length=1)  # models the device must have (1 is always read)
    points: list[PointMapping] = Field(min_length=1)


class CompanionWrite(_Strict):
    target: str
    value: float
    default: float | None = None  # written on restore; none = same as value


class Control(_Strict):
    description: str = ""
    target: str  # register name (modbus) or "model.point" (sunspec)
    argument: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: str
    min: LimitValue
    max: LimitValue
    companions: list[CompanionWrite] = Field(default_factory=list)  # written before the target
    # The argument is converted to a percentage of this reported value before it is written (and the
    # readback back into the argument's unit), for targets that take % of a rating.
    percent_of: str | None = None
    readback: str | None = None  # register/point read back after the write; none = the target
    readback_metric: str | None = None  # key of the readback in cmd/result; none = the argument name
    default: LimitValue  # restored when a command's hold_s runs out


class Profile(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    kind: str
    description: str = ""
    protocol: Protocol
    poll_interval_s: float = Field(1.0, gt=0)
    modbus: ModbusMap | None = None
    sunspec: SunSpecMap | None = None
    controls: dict[str, Control] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _matches_protocol(self) -> Profile:
        if (self.protocol is Protocol.MODBUS) != (self.modbus is not None) or (
            self.protocol is Protocol.SUNSPEC
        ) != (self.sunspec is not None):
            raise ValueError(
                f"protocol {self.protocol.value} needs exactly its own '{self.protocol.value}' map"
            )
        return self

    def register(self, name: str) -> Register:
        assert self.modbus is not None
        for reg in self.modbus.registers:
            if reg.name == name:
                return reg
        raise KeyError(name)

    def reported_names(self) -> set[str]:
        """Names a limit may reference: published metrics and (modbus) register names."""
        names: set[str] = set()
        if self.modbus is not None:
            for reg in self.modbus.registers:
                if reg.poll:
                    names.add(reg.name)
                    if reg.metric:
                        names.add(reg.metric)
        if self.sunspec is not None:
            names.update(m.metric for m in self.sunspec.points)
            names.update(m.point for m in self.sunspec.points)
        return names


_SUNSPEC_UNITS = {
    "W": "W",
    "Wh": "Wh",
    "WH": "Wh",
    "Hz": "Hz",
    "V": "V",
    "A": "A",
    "VA": "VA",
    "var": "var",
    "VAr": "var",
    "Pct": "%",
    "C": "°C",
    "AH": "Ah",
}
# (unit the device reports in, catalogue unit) -> the multiplier that converts one into the other
_CONVERSIONS = {("%", "1"): 0.01, ("kWh", "Wh"): 1000.0}


def check(profile: Profile) -> list[str]:
    """Problems with a profile against the metric catalogue and SunSpec definitions (empty = fine)."""
    problems: list[str] = []
    if profile.modbus is not None:
        problems += _check_modbus(profile, profile.modbus)
    if profile.sunspec is not None:
        problems += _check_sunspec(profile.sunspec)
    reported = profile.reported_names()
    for op, control in profile.controls.items():
        if not _is_slug(op):
            problems.append(f"control {op!r}: not a valid op name")
        targets = [control.target, *(c.target for c in control.companions)]
        if control.readback:
            targets.append(control.readback)
        for target in targets:
            problem = _check_target(profile, target)
            if problem:
                problems.append(f"control {op}: {problem}")
        limits = [("min", control.min), ("max", control.max), ("default", control.default)]
        if control.percent_of is not None:
            limits.append(("percent_of", control.percent_of))
        for label, limit in limits:
            if isinstance(limit, str) and limit.lstrip("-") not in reported:
                problems.append(
                    f"control {op}: {label} references {limit!r}, which the device does not report"
                )
    return problems


def _check_modbus(profile: Profile, modbus: ModbusMap) -> list[str]:
    problems: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for reg in modbus.registers:
        for addr in range(reg.address, reg.address + reg.size):
            other = seen.setdefault((reg.table, addr), reg.name)
            if other != reg.name:
                problems.append(f"register {reg.name} overlaps {other} at {addr}")
        if reg.metric is not None:
            metric = BY_NAME.get(reg.metric)
            if metric is None:
                problems.append(f"register {reg.name}: unknown metric {reg.metric!r}")
            elif reg.unit is not None and reg.unit != metric.unit:
                problems.append(
                    f"register {reg.name}: unit {reg.unit!r} but {metric.name} is in {metric.unit!r}"
                )
    return problems


def _check_sunspec(spec: SunSpecMap) -> list[str]:
    problems: list[str] = []
    for model_id in spec.models:
        try:
            sunspec.model(model_id)
        except KeyError:
            problems.append(f"unknown SunSpec model {model_id}")
    for mapping in spec.points:
        if mapping.model_id not in spec.models:
            problems.append(f"{mapping.point}: model {mapping.model_id} is not in the required models")
            continue
        point = sunspec.model(mapping.model_id).points.get(mapping.point_name)
        if point is None:
            problems.append(f"{mapping.point}: no such point")
            continue
        metric = BY_NAME.get(mapping.metric)
        if metric is None:
            problems.append(f"{mapping.point}: unknown metric {mapping.metric!r}")
            continue
        unit = _SUNSPEC_UNITS.get(point.units or "", point.units)
        expected = 1.0 if unit == metric.unit else _CONVERSIONS.get((unit or "", metric.unit))
        if unit is not None and expected is not None and abs(mapping.multiplier - expected) > 1e-12:
            problems.append(f"{mapping.point}: {unit} -> {metric.unit} needs multiplier {expected}")
    return problems


def _check_target(profile: Profile, target: str) -> str | None:
    if profile.modbus is not None:
        try:
            profile.register(target)
        except KeyError:
            return f"no register named {target!r}"
        return None
    assert profile.sunspec is not None
    model_id, _, name = target.partition(".")
    if not model_id.isdigit() or int(model_id) not in profile.sunspec.models:
        return f"{target!r}: model not among the required models"
    point = sunspec.model(int(model_id)).points.get(name)
    if point is None:
        return f"{target!r}: no such point"
    return None


def _is_slug(text: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", text) is not None


def parse(text: str, origin: str = "<profile>") -> Profile:
    try:
        profile = Profile.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as err:
        raise ProfileError(f"{origin}: {err}") from err
    problems = check(profile)
    if problems:
        raise ProfileError(f"{origin}: " + "; ".join(problems))
    return profile


def load_file(path: str | Path) -> Profile:
    path = Path(path)
    return parse(path.read_text(encoding="utf-8"), str(path))


# Next to this module (a plain path: importlib.resources trips over the editable install's namespace).
PROFILE_DIR = Path(__file__).with_name("profiles")


def shipped_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@cache
def load(name: str) -> Profile:
    """A shipped profile by name, or a YAML file if ``name`` is a path."""
    if name.endswith((".yaml", ".yml")):
        return load_file(name)
    resource = PROFILE_DIR / f"{name}.yaml"
    if not resource.is_file():
        raise ProfileError(f"no profile {name!r}; shipped: {', '.join(shipped_names())}")
    profile = parse(resource.read_text(encoding="utf-8"), f"profiles/{name}.yaml")
    if profile.name != name:
        raise ProfileError(f"profiles/{name}.yaml names itself {profile.name!r}")
    return profile
