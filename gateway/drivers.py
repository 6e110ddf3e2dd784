"""Drivers turn a profile into requests and values: what to read each poll, how to decode it, and how
to write a control. A driver holds no connection; the device's task passes its own in."""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from core import sunspec
from gateway import codec
from gateway.errors import CommandRejected, DeviceFault
from gateway.modbus import ModbusConnection
from gateway.plan import MAX_REGISTERS, ReadBlock, Span, plan_reads
from gateway.profile import Control, Profile, Protocol, Register

log = logging.getLogger(__name__)

Image = dict[tuple[str, int], int]  # (table, address) -> register word, from this poll's reads


@dataclass(slots=True)
class Reading:
    metrics: dict[str, float]  # catalogue metric -> value (published)
    reported: dict[str, float]  # every decoded value by metric, register name or point (for limits)


@dataclass(frozen=True, slots=True)
class Write:
    address: int
    words: list[int]


@dataclass(slots=True)
class WritePlan:
    writes: list[Write]  # companions first, the target last
    readback: Sequence[Write | ReadBlock] = field(default_factory=list)


async def read_image(conn: ModbusConnection, blocks: Sequence[ReadBlock]) -> Image:
    image: Image = {}
    for block in blocks:
        words = await conn.read(block.table, block.start, block.count)  # type: ignore[arg-type]
        image.update(zip(((block.table, a) for a in range(block.start, block.end)), words, strict=True))
    return image


class Driver:
    """The common face of the protocol drivers."""

    profile: Profile
    blocks: list[ReadBlock]
    identity: dict[str, str]

    async def discover(self, conn: ModbusConnection) -> None:
        raise NotImplementedError

    def decode(self, image: Image) -> Reading:
        raise NotImplementedError

    def encode_control(self, control: Control, value: float, default: bool = False) -> list[Write]:
        """Companion writes and the target write for ``value`` (already in the target's unit)."""
        raise NotImplementedError

    def readback_block(self, control: Control) -> ReadBlock:
        raise NotImplementedError

    def decode_readback(self, control: Control, image: Image) -> float | None:
        raise NotImplementedError

    def resolution(self, control: Control) -> float:
        """The target's step in engineering units (for comparing a readback with what was written)."""
        raise NotImplementedError


def make_driver(profile: Profile) -> Driver:
    if profile.protocol is Protocol.SUNSPEC:
        return SunSpecDriver(profile)
    return ModbusDriver(profile)


class ModbusDriver(Driver):
    def __init__(self, profile: Profile) -> None:
        assert profile.modbus is not None
        self.profile = profile
        self.map = profile.modbus
        self.identity = {}
        self.polled = [r for r in self.map.registers if r.poll]
        mapped = {(r.table, a) for r in self.map.registers for a in range(r.address, r.address + r.size)}
        mapped |= {("holding", a) for lo, hi in self.map.known_mapped for a in range(lo, hi + 1)}
        spans = [Span(r.table, r.address, r.size) for r in self.polled]
        spans += [Span(r.table, r.scale_register, 1) for r in self.polled if r.scale_register is not None]
        self.blocks = plan_reads(spans, lambda t, a: (t, a) in mapped, self.map.max_gap)

    async def discover(self, conn: ModbusConnection) -> None:
        return None

    def _value(self, reg: Register, image: Image) -> float:
        words = [image[(reg.table, a)] for a in range(reg.address, reg.address + reg.size)]
        raw = codec.decode_words(reg.type, words, reg.word_order)
        return float(raw) * self._multiplier(reg, image)

    def _multiplier(self, reg: Register, image: Image) -> float:
        if reg.scale_register is None:
            return codec.scale_of(reg.scale, None)
        sf = codec.decode_words("int16", [image[(reg.table, reg.scale_register)]])
        if sf == -0x8000:
            raise DeviceFault(f"scale factor register {reg.scale_register} not implemented")
        return codec.scale_of(None, int(sf))

    def decode(self, image: Image) -> Reading:
        metrics: dict[str, float] = {}
        reported: dict[str, float] = {}
        for reg in self.polled:
            value = self._value(reg, image)
            if value != value:  # a float32 NaN: no value this time
                continue
            reported[reg.name] = value
            if reg.metric is not None:
                metrics[reg.metric] = value
                reported[reg.metric] = value
        return Reading(metrics, reported)

    def encode_control(self, control: Control, value: float, default: bool = False) -> list[Write]:
        writes = []
        for companion in control.companions:
            reg = self.profile.register(companion.target)
            v = companion.default if default and companion.default is not None else companion.value
            writes.append(self._write(reg, v, None))
        reg = self.profile.register(control.target)
        writes.append(self._write(reg, value, None))
        return writes

    def _write(self, reg: Register, value: float, sf: int | None) -> Write:
        if reg.scale_register is not None:
            raise CommandRejected(
                f"register {reg.name}: writing through a scale-factor register is not supported"
            )
        try:
            raw = codec.to_raw(value, codec.scale_of(reg.scale, sf), reg.type)
            return Write(reg.address, codec.encode_words(reg.type, raw, reg.word_order))
        except ValueError as err:
            raise CommandRejected(f"{reg.name}: {err}") from err

    def readback_block(self, control: Control) -> ReadBlock:
        reg = self.profile.register(control.readback or control.target)
        return Span(reg.table, reg.address, reg.size)

    def decode_readback(self, control: Control, image: Image) -> float | None:
        return self._value(self.profile.register(control.readback or control.target), image)

    def resolution(self, control: Control) -> float:
        return codec.scale_of(self.profile.register(control.target).scale, None)


class SunSpecDriver(Driver):
    """Reads whole models (adjacent ones merged up to 125 registers); decodes with core.sunspec."""

    def __init__(self, profile: Profile) -> None:
        assert profile.sunspec is not None
        self.profile = profile
        self.spec = profile.sunspec
        self.identity = {}
        self.bases: dict[int, int] = {}  # model id -> address of its ID register
        self.blocks = []
        self._last_image: Image = {}
        self._points = [
            (m.metric, m.point, sunspec.model(m.model_id), m.model_id, m.point_name, m.multiplier)
            for m in self.spec.points
        ]

    async def discover(self, conn: ModbusConnection) -> None:
        base = await self._find_marker(conn)
        chain: dict[int, tuple[int, int]] = {}  # model id -> (address, length)
        address = base + 2
        while True:
            model_id, length = await conn.read("holding", address, 2)
            if model_id == sunspec.END_MODEL_ID:
                break
            chain.setdefault(model_id, (address, length))
            address += 2 + length
            if address > 0xFFFF or len(chain) > 200:
                raise DeviceFault("SunSpec model chain does not end")
        missing = [m for m in self.spec.models if m not in chain]
        if missing:
            raise DeviceFault(f"SunSpec models {missing} missing (device has {sorted(chain)})")
        for model_id in self.spec.models:
            expected = sunspec.model(model_id).length
            if chain[model_id][1] < expected:
                raise DeviceFault(f"SunSpec model {model_id} has length {chain[model_id][1]} < {expected}")
        self.bases = {m: chain[m][0] for m in self.spec.models}
        await self._read_common(conn, chain.get(1))
        end = address
        polled = [
            Span("holding", self.bases[m], sunspec.model(m).length + 2) for m in self.spec.models if m != 1
        ]
        # The chain is contiguous, so every register between base and the end marker answers reads.
        self.blocks = plan_reads(polled, lambda _t, a: base <= a < end, max_gap=MAX_REGISTERS)

    async def _find_marker(self, conn: ModbusConnection) -> int:
        for base in sunspec.BASE_ADDRESSES:
            try:
                words = await conn.read("holding", base, 2)
            except DeviceFault:
                continue  # exception 02 here just means "not at this address"
            if tuple(words) == sunspec.MARKER:
                return base
        raise DeviceFault("no SunSpec marker 'SunS' at 40000, 0 or 50000")

    async def _read_common(self, conn: ModbusConnection, where: tuple[int, int] | None) -> None:
        if where is None:
            return
        common = sunspec.model(1)
        words = await conn.read("holding", where[0], min(common.length + 2, MAX_REGISTERS))
        for key, point in (("manufacturer", "Mn"), ("model", "Md"), ("serial", "SN"), ("version", "Vr")):
            p = common.points[point]
            self.identity[key] = str(sunspec.decode(p, words[p.offset : p.offset + p.size]) or "")

    def _point_raw(self, image: Image, model: sunspec.ModelDef, model_id: int, name: str) -> float | None:
        point = model.points[name]
        start = self.bases[model_id] + point.offset
        words = [image[("holding", a)] for a in range(start, start + point.size)]
        raw = sunspec.decode(point, words)
        if raw is None or isinstance(raw, str):
            return None
        if point.sf is None:
            return float(raw)
        if isinstance(point.sf, int):
            return float(raw) * 10.0**point.sf
        sf = self._point_raw_int(image, model, model_id, point.sf)
        if sf is None:
            return None  # a value with an unknown scale is no value
        return float(raw) * 10.0**sf

    def _point_raw_int(self, image: Image, model: sunspec.ModelDef, model_id: int, name: str) -> int | None:
        point = model.points[name]
        value = sunspec.decode(point, [image[("holding", self.bases[model_id] + point.offset)]])
        return value if isinstance(value, int) else None

    def decode(self, image: Image) -> Reading:
        self._last_image = image
        metrics: dict[str, float] = {}
        reported: dict[str, float] = {}
        for metric, key, model, model_id, name, multiplier in self._points:
            value = self._point_raw(image, model, model_id, name)
            if value is None:
                continue
            value *= multiplier
            metrics[metric] = value
            reported[metric] = value
            reported[key] = value
        return Reading(metrics, reported)

    def _target(self, target: str) -> tuple[int, sunspec.ModelDef, sunspec.Point]:
        model_id, _, name = target.partition(".")
        model = sunspec.model(int(model_id))
        return int(model_id), model, model.points[name]

    def _sf(self, model_id: int, model: sunspec.ModelDef, point: sunspec.Point) -> int:
        if point.sf is None:
            return 0
        if isinstance(point.sf, int):
            return point.sf
        sf = self._point_raw_int(self._last_image, model, model_id, point.sf) if self._last_image else None
        if sf is None:
            raise CommandRejected(f"scale factor {point.sf} unknown (no complete poll yet)")
        return sf

    def _write(self, target: str, value: float) -> Write:
        model_id, model, point = self._target(target)
        if not point.writable:
            raise CommandRejected(f"{target} is read-only")
        try:
            raw = codec.to_raw(value, 10.0 ** self._sf(model_id, model, point), point.type)
            words = sunspec.encode(point, raw)
            # Out of range, or the type's "not implemented" value: neither may be written.
            if sunspec.decode(point, words) != raw:
                raise ValueError(f"{raw} does not fit {point.type}")
        except (ValueError, struct.error) as err:
            raise CommandRejected(f"{target}: {err}") from err
        return Write(self.bases[model_id] + point.offset, words)

    def encode_control(self, control: Control, value: float, default: bool = False) -> list[Write]:
        writes = []
        for companion in control.companions:
            v = companion.default if default and companion.default is not None else companion.value
            writes.append(self._write(companion.target, v))
        writes.append(self._write(control.target, value))
        return writes

    def readback_block(self, control: Control) -> ReadBlock:
        model_id, _model, point = self._target(control.readback or control.target)
        return Span("holding", self.bases[model_id] + point.offset, point.size)

    def decode_readback(self, control: Control, image: Image) -> float | None:
        model_id, model, point = self._target(control.readback or control.target)
        merged = {**self._last_image, **image}
        return self._point_raw(merged, model, model_id, point.name)

    def resolution(self, control: Control) -> float:
        model_id, model, point = self._target(control.target)
        try:
            return 10.0 ** self._sf(model_id, model, point)
        except CommandRejected:
            return 1.0
