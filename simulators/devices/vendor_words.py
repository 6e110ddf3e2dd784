"""Big-endian word encoding for the vendor maps (32-bit values high word first), clamped to the type."""

from __future__ import annotations


def u16(value: float) -> list[int]:
    return [max(0, min(0xFFFF, round(value)))]


def i16(value: float) -> list[int]:
    return [max(-0x8000, min(0x7FFF, round(value))) & 0xFFFF]


def u32(value: float) -> list[int]:
    v = max(0, min(0xFFFFFFFF, round(value)))
    return [v >> 16, v & 0xFFFF]


def i32(value: float) -> list[int]:
    v = max(-(2**31), min(2**31 - 1, round(value))) & 0xFFFFFFFF
    return [v >> 16, v & 0xFFFF]


def to_u32(regs: list[int]) -> int:
    return (regs[0] << 16) | regs[1]
