"""A device's register image: which holding registers exist, which are writable, and the write rules.

Protocol-neutral (no pymodbus here): errors are raised as ``ModbusError`` subclasses carrying the Modbus
exception code, and the server adapter turns them into exception responses.

Exception codes answered:
- 01 illegal function: function codes other than 3 (read), 6 and 16 (write), 23 (read/write);
- 02 illegal data address: a register that is not mapped, in any read or write touching one, and a
  write touching a read-only register (as many SunSpec devices do);
- 03 illegal data value: a write to a writable register with a value outside the point's range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


class ModbusError(Exception):
    code = 4


class IllegalFunction(ModbusError):
    code = 1


class IllegalAddress(ModbusError):
    code = 2


class IllegalValue(ModbusError):
    code = 3


@dataclass(frozen=True, slots=True)
class WriteRule:
    """A writable point: ``size`` registers from ``address``, accepted when ``check(registers)`` holds."""

    name: str
    address: int
    size: int
    check: Callable[[list[int]], bool]


class RegisterImage:
    def __init__(self) -> None:
        self._regs: dict[int, int] = {}
        self._rules: dict[int, WriteRule] = {}  # every address of a writable point -> its rule

    def define(self, address: int, values: Iterable[int]) -> None:
        """Map registers (read-only until a write rule covers them)."""
        for i, v in enumerate(values):
            self._regs[address + i] = v & 0xFFFF

    def allow_write(self, rule: WriteRule) -> None:
        for a in range(rule.address, rule.address + rule.size):
            if a not in self._regs:
                raise ValueError(f"writable register {a} ({rule.name}) is not mapped")
            self._rules[a] = rule

    def __contains__(self, address: int) -> bool:
        return address in self._regs

    @property
    def addresses(self) -> list[int]:
        return sorted(self._regs)

    def poke(self, address: int, values: Iterable[int]) -> None:
        """Update mapped registers from the device side (no access checks)."""
        regs = self._regs
        for i, v in enumerate(values):
            regs[address + i] = v & 0xFFFF

    def read(self, address: int, count: int) -> list[int]:
        regs = self._regs
        try:
            return [regs[a] for a in range(address, address + count)]
        except KeyError as missing:
            raise IllegalAddress(f"register {missing} is not mapped") from None

    def write(self, address: int, values: list[int]) -> list[WriteRule]:
        """Check and store a client's write; returns the points it changed, for the device to act on."""
        end = address + len(values)
        for a in range(address, end):
            if a not in self._regs or a not in self._rules:
                raise IllegalAddress(f"register {a} is not writable")
        touched: list[WriteRule] = []
        for a in range(address, end):
            rule = self._rules[a]
            if rule not in touched:
                touched.append(rule)
        # A point is checked whole, so a write of one word of a 32-bit point is judged on the result.
        new = {address + i: v & 0xFFFF for i, v in enumerate(values)}
        for rule in touched:
            regs = [new.get(a, self._regs[a]) for a in range(rule.address, rule.address + rule.size)]
            if not rule.check(regs):
                raise IllegalValue(f"value {regs} out of range for {rule.name}")
        self._regs.update(new)
        return touched


def pick_scale_factor(max_abs: float, signed: bool, finest: int = -3, registers: int = 1) -> int:
    """The finest power-of-ten exponent >= ``finest`` at which ``max_abs`` still fits the register type."""
    bits = 16 * registers
    limit = (1 << (bits - 1)) - 2 if signed else (1 << bits) - 2  # keep clear of the 'not implemented' values
    sf = finest
    while max_abs / (10.0**sf) > limit:
        sf += 1
    return sf
