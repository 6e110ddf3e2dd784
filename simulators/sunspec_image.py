"""Lays SunSpec models out in a register image ("SunS", models, end model) using core.sunspec layouts."""

from __future__ import annotations

from collections.abc import Collection

from core.sunspec import END_MODEL_ID, MARKER, Point, decode, encode, model
from simulators.registers import RegisterImage, WriteRule

# Raw ranges a value is clamped to (the extreme 'not implemented' patterns stay reserved).
_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-32767, 32767),
    "uint16": (0, 65534),
    "enum16": (0, 65534),
    "bitfield16": (0, 0x7FFF),
    "count": (0, 65535),
    "int32": (-(2**31) + 1, 2**31 - 1),
    "uint32": (0, 2**32 - 2),
    "enum32": (0, 2**32 - 2),
    "bitfield32": (0, 2**31 - 1),
}
_ACC_MOD = {"acc32": 2**32, "acc64": 2**64}  # accumulators roll over, as real meters do


class SunSpecImage:
    def __init__(self, image: RegisterImage, base: int = 40000) -> None:
        self.image = image
        self.base = base
        self.starts: dict[int, int] = {}  # model id -> address of its ID register
        self._sf: dict[tuple[int, str], int] = {}
        image.define(base, MARKER)
        self._next = base + 2
        self._ended = False

    def add_model(self, model_id: int) -> int:
        if self._ended:
            raise RuntimeError("models cannot follow the end model")
        layout = model(model_id)
        start = self._next
        self.starts[model_id] = start
        for p in layout.points.values():
            self.image.define(start + p.offset, encode(p, None))
        self.image.poke(start, (model_id, layout.length))
        self._next = start + 2 + layout.length
        return start

    def end(self) -> None:
        self.image.define(self._next, (END_MODEL_ID, 0))
        self._ended = True

    def _point(self, model_id: int, name: str) -> tuple[int, Point]:
        return self.starts[model_id], model(model_id).points[name]

    def set_raw(self, model_id: int, name: str, value: int | float | str | None) -> None:
        start, p = self._point(model_id, name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if p.type in _ACC_MOD:
                value = int(value) % _ACC_MOD[p.type]
            elif p.type in _RANGE:
                lo, hi = _RANGE[p.type]
                value = max(lo, min(hi, round(value)))
        self.image.poke(start + p.offset, encode(p, value))

    def get_raw(self, model_id: int, name: str) -> int | float | str | None:
        start, p = self._point(model_id, name)
        return decode(p, self.image.read(start + p.offset, p.size))

    def set_sf(self, model_id: int, sf_name: str, exponent: int) -> None:
        self._sf[(model_id, sf_name)] = exponent
        self.set_raw(model_id, sf_name, exponent)

    def _exponent(self, model_id: int, p: Point) -> int:
        if isinstance(p.sf, int):
            return p.sf
        if p.sf is None:
            return 0
        return self._sf[(model_id, p.sf)]

    def step(self, model_id: int, name: str) -> float:
        """The physical value of one raw unit of a point (its resolution)."""
        _, p = self._point(model_id, name)
        return 10.0 ** self._exponent(model_id, p)

    def set(self, model_id: int, name: str, value: float | None) -> None:
        """Store a physical value, scaled by the point's scale factor (which must be set first)."""
        _, p = self._point(model_id, name)
        self.set_raw(model_id, name, None if value is None else value / 10.0 ** self._exponent(model_id, p))

    def get(self, model_id: int, name: str) -> float | None:
        """A physical value (a client's write, read back by the physics)."""
        _, p = self._point(model_id, name)
        raw = self.get_raw(model_id, name)
        if raw is None or isinstance(raw, str):
            return None
        return float(raw) * 10.0 ** self._exponent(model_id, p)

    def writable(
        self,
        model_id: int,
        name: str,
        lo: float | None = None,
        hi: float | None = None,
        allowed: Collection[int] | None = None,
    ) -> None:
        """Let clients write a point; a value outside [lo, hi] (physical) or ``allowed`` (raw) gets 03."""
        start, p = self._point(model_id, name)
        exponent = self._exponent(model_id, p)

        def check(regs: list[int]) -> bool:
            raw = decode(p, regs)
            if raw is None or isinstance(raw, str):
                return (
                    allowed is None and lo is None and hi is None
                )  # 'not implemented' only if unconstrained
            if allowed is not None and raw not in allowed:
                return False
            value = float(raw) * 10.0**exponent
            return (lo is None or value >= lo - 1e-9) and (hi is None or value <= hi + 1e-9)

        self.image.allow_write(WriteRule(f"{model(model_id).name}.{name}", start + p.offset, p.size, check))
