"""Small Modbus TCP devices for the gateway's tests (real pymodbus servers, real sockets).

A FakeDevice holds a sparse register map: unmapped registers answer exception 02, as the vendor maps
do. ``pause()`` makes it stop answering (requests time out) without closing its socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext
from pymodbus.datastore.store import BaseModbusDataBlock
from pymodbus.server import ModbusTcpServer

from core import sunspec


class SparseRegisters(BaseModbusDataBlock[dict[int, int]]):
    def __init__(self, device: FakeDevice) -> None:
        self.device = device
        self.values = device.registers
        self.address = 0
        self.default_value = 0

    def getValues(self, address: int, count: int = 1) -> list[int] | list[bool] | ExcCodes:
        address -= 1  # ModbusDeviceContext adds one
        self.device.reads.append((address, count))
        try:
            return [self.values[a] for a in range(address, address + count)]
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    def setValues(self, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        address -= 1
        if any(a not in self.device.writable for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        for i, v in enumerate(values):
            self.values[address + i] = int(v)
        self.device.writes.append((address, [int(v) for v in values]))
        return None


class PausableContext(ModbusDeviceContext):
    """Requests wait while the device is paused: to the client it simply stops answering."""

    def __init__(self, device: FakeDevice, block: SparseRegisters) -> None:
        super().__init__(hr=block, ir=block)
        self.device = device

    async def async_getValues(
        self, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        await self.device.answering.wait()
        return self.getValues(func_code, address, count)

    async def async_setValues(
        self, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        await self.device.answering.wait()
        return self.setValues(func_code, address, values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeDevice:
    def __init__(self, registers: dict[int, int], writable: Iterable[int] = ()) -> None:
        self.registers = dict(registers)
        self.writable = set(writable)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, list[int]]] = []
        self.answering = asyncio.Event()
        self.answering.set()
        self.port = free_port()
        block = SparseRegisters(self)
        context = ModbusServerContext(devices=PausableContext(self, block), single=True)
        self._server = ModbusTcpServer(context, address=("127.0.0.1", self.port))

    def pause(self) -> None:
        self.answering.clear()

    def resume(self) -> None:
        self.answering.set()

    async def __aenter__(self) -> FakeDevice:
        await self._server.serve_forever(background=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resume()
        await self._server.shutdown()


def sunspec_registers(
    models: dict[int, dict[str, int | float | str | None]], base: int = 40000
) -> dict[int, int]:
    """A SunSpec register image: 'SunS' at ``base``, the models in order (points given as raw values,
    the rest 'not implemented'), then the end model."""
    regs: dict[int, int] = {base: sunspec.MARKER[0], base + 1: sunspec.MARKER[1]}
    address = base + 2
    for model_id, values in models.items():
        definition = sunspec.model(model_id)
        words = [0] * (definition.length + 2)
        for name, point in definition.points.items():
            value: int | float | str | None
            if name == "ID":
                value = model_id
            elif name == "L":
                value = definition.length
            else:
                value = values.get(name)
            words[point.offset : point.offset + point.size] = sunspec.encode(point, value)
        regs.update({address + i: w for i, w in enumerate(words)})
        address += len(words)
    regs[address], regs[address + 1] = sunspec.END_MODEL_ID, 0
    return regs


def model_base(regs: dict[int, int], model_id: int, base: int = 40000) -> int:
    address = base + 2
    while regs[address] != sunspec.END_MODEL_ID:
        if regs[address] == model_id:
            return address
        address += regs[address + 1] + 2
    raise KeyError(model_id)
