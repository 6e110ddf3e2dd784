"""Checking a command against its profile before anything is written."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from core.payloads import Command
from gateway.errors import CommandRejected
from gateway.profile import Control, LimitValue, Profile


@dataclass(frozen=True, slots=True)
class CheckedCommand:
    op: str
    control: Control
    argument: float  # in the control's unit, as sent
    target_value: float  # what is written to the target (argument, or % of percent_of)


def resolve(limit: LimitValue, reported: Mapping[str, float]) -> float:
    """A limit as a number: itself, or the device's latest value of the name it references."""
    if not isinstance(limit, str):
        return float(limit)
    sign, name = (-1.0, limit[1:]) if limit.startswith("-") else (1.0, limit)
    if name not in reported:
        raise CommandRejected(f"limit {limit!r} unknown: the device has not reported {name} yet")
    return sign * reported[name]


def check_command(command: Command, profile: Profile, reported: Mapping[str, float]) -> CheckedCommand:
    control = profile.controls.get(command.op)
    if control is None:
        raise CommandRejected(
            f"unknown op {command.op!r}; {profile.name} has {sorted(profile.controls) or 'none'}"
        )
    unexpected = set(command.args) - {control.argument}
    if unexpected:
        raise CommandRejected(
            f"unexpected argument(s) {sorted(unexpected)}; {command.op} takes {control.argument}"
        )
    value = command.args.get(control.argument)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandRejected(f"{command.op} needs a number {control.argument!r} ({control.unit})")
    low, high = resolve(control.min, reported), resolve(control.max, reported)
    if not low <= value <= high:
        raise CommandRejected(f"{control.argument}={value} {control.unit} outside {low:g}..{high:g}")
    return CheckedCommand(command.op, control, float(value), to_target(control, float(value), reported))


def to_target(control: Control, value: float, reported: Mapping[str, float]) -> float:
    if control.percent_of is None:
        return value
    reference = resolve(control.percent_of, reported)
    if reference <= 0:
        raise CommandRejected(f"{control.percent_of} is {reference:g}: cannot express a percentage of it")
    return value / reference * 100.0


def from_target(control: Control, value: float, reported: Mapping[str, float]) -> float:
    if control.percent_of is None:
        return value
    return value * resolve(control.percent_of, reported) / 100.0
