"""SunSpec information models, read from the definitions pysunspec2 ships (never retyped here).

Shared by the gateway (decoding what a device holds) and the simulators (encoding what a device
holds). Only the fixed part of a model (its top-level points) is laid out; repeating groups are not
needed by the models Lishui uses. Offsets count from the model's ``ID`` register, so ``ID`` is at 0,
``L`` at 1 and ``L`` itself is the model's length without those two registers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources

BASE_ADDRESSES = (40000, 0, 50000)  # where devices put the "SunS" marker, most common first
MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF

# Register values meaning "not implemented", by type.
_NOT_IMPLEMENTED: dict[str, int] = {
    "int16": 0x8000,
    "sunssf": 0x8000,
    "uint16": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "count": 0x0000,
    "int32": 0x80000000,
    "uint32": 0xFFFFFFFF,
    "enum32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF,
    "acc32": 0x00000000,
    "int64": 0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF,
    "acc64": 0x0000000000000000,
}
_STRUCT = {
    "int16": ">h",
    "sunssf": ">h",
    "uint16": ">H",
    "enum16": ">H",
    "bitfield16": ">H",
    "count": ">H",
    "int32": ">i",
    "uint32": ">I",
    "enum32": ">I",
    "bitfield32": ">I",
    "acc32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "acc64": ">Q",
    "float32": ">f",
}


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    offset: int  # registers from the model's ID register
    type: str
    size: int  # registers
    sf: str | int | None  # scale-factor point name, a fixed exponent, or none
    units: str | None
    writable: bool


@dataclass(frozen=True, slots=True)
class ModelDef:
    id: int
    name: str
    length: int  # L: registers after ID and L
    points: dict[str, Point]


@cache
def model(model_id: int) -> ModelDef:
    """The layout of a SunSpec model's fixed part."""
    path = resources.files("sunspec2").joinpath("models", "json", f"model_{model_id}.json")
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyError(f"no SunSpec model {model_id} in pysunspec2's definitions") from None
    group = definition["group"]
    points: dict[str, Point] = {}
    offset = 0
    for p in group["points"]:
        sf = p.get("sf")
        points[p["name"]] = Point(
            name=p["name"],
            offset=offset,
            type=p["type"],
            size=int(p["size"]),
            sf=int(sf) if isinstance(sf, int | float) else sf,
            units=p.get("units"),
            writable=p.get("access") == "RW",
        )
        offset += int(p["size"])
    return ModelDef(model_id, group["name"], offset - 2, points)


def decode(point: Point, registers: list[int] | tuple[int, ...]) -> int | float | str | None:
    """A point's raw value from its registers; None where the device says 'not implemented'."""
    if point.type == "string":
        raw = b"".join(r.to_bytes(2, "big") for r in registers)
        return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
    if point.type == "pad":
        return None
    fmt = _STRUCT.get(point.type)
    if fmt is None:
        raise ValueError(f"SunSpec type {point.type!r} not supported")
    raw_bytes = b"".join(r.to_bytes(2, "big") for r in registers)
    if point.type != "float32":
        unsigned = int.from_bytes(raw_bytes, "big")
        if _NOT_IMPLEMENTED.get(point.type) == unsigned and point.type not in ("acc32", "acc64"):
            return None
    value = struct.unpack(fmt, raw_bytes)[0]
    if point.type == "float32" and value != value:  # NaN = not implemented
        return None
    return value


def encode(point: Point, value: int | float | str | None) -> list[int]:
    """The registers holding ``value`` (already in raw, unscaled units); None -> 'not implemented'."""
    if point.type == "string":
        raw = str(value or "").encode()[: point.size * 2].ljust(point.size * 2, b"\x00")
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if point.type == "pad":
        return [0x8000] * point.size
    fmt = _STRUCT[point.type]
    if value is None:
        if point.type == "float32":
            raw_bytes = struct.pack(fmt, float("nan"))
        else:
            raw_bytes = _NOT_IMPLEMENTED[point.type].to_bytes(point.size * 2, "big")
    else:
        number = float(value)
        raw_bytes = struct.pack(fmt, number if point.type == "float32" else round(number))
    return [int.from_bytes(raw_bytes[i : i + 2], "big") for i in range(0, len(raw_bytes), 2)]


def scaled(raw: int | float | None, exponent: int | None) -> float | None:
    """Apply a scale factor: value x 10**sf; None stays None (as does an unimplemented sf)."""
    if raw is None:
        return None
    return float(raw) * (10.0 ** (exponent or 0))
