"""Register words <-> values for the plain (non-SunSpec) Modbus maps of profiles."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from gateway.profile import REGISTER_SIZE

_FORMAT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "int64": ">q",
    "uint64": ">Q",
}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def decode_words(type_: str, words: Sequence[int], word_order: str = "big") -> int | float:
    """The raw (unscaled) value held in ``words``; ``word_order='little'`` means low word first."""
    size = REGISTER_SIZE[type_]
    if len(words) != size:
        raise ValueError(f"{type_} needs {size} registers, got {len(words)}")
    ordered = words if word_order == "big" else list(reversed(words))
    raw = b"".join(w.to_bytes(2, "big") for w in ordered)
    value: int | float = struct.unpack(_FORMAT[type_], raw)[0]
    return value


def encode_words(type_: str, value: int | float, word_order: str = "big") -> list[int]:
    """The registers holding the raw value; ValueError if it does not fit the type."""
    if type_ == "float32":
        raw = struct.pack(">f", float(value))
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not an integer for {type_}")
        low, high = _INT_RANGE[type_]
        if not low <= int(value) <= high:
            raise ValueError(f"{value} does not fit {type_} ({low}..{high})")
        raw = struct.pack(_FORMAT[type_], int(value))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


def scale_of(scale: float | None, sf_exponent: int | None) -> float:
    """The multiplier of a register: a fixed scale, 10**sf from a scale-factor register, or 1."""
    if sf_exponent is not None:
        return 10.0**sf_exponent
    return 1.0 if scale is None else scale


def to_raw(value: float, multiplier: float, type_: str) -> int | float:
    """An engineering value as the raw register value (rounded to the register's resolution)."""
    raw = value / multiplier
    if type_ == "float32":
        return raw
    if not math.isfinite(raw):
        raise ValueError(f"{value} is not a finite number")
    return round(raw)
