"""The only module that imports pymodbus: one Modbus TCP connection per device endpoint.

Library exceptions are translated once, here, into gateway.errors: no answer -> DeviceOffline, a Modbus
exception response -> ModbusExceptionResponse. pymodbus turns a cancellation of a pending request
into ModbusIOException; that is turned back into CancelledError so cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from gateway.errors import DeviceFault, DeviceOffline, ModbusExceptionResponse

Table = Literal["holding", "input"]
MAX_READ_REGISTERS = 125  # Modbus limit for function codes 3 and 4
MAX_WRITE_REGISTERS = 123  # Modbus limit for function code 16

# pymodbus logs every timeout at ERROR; the gateway reports state changes itself, once.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusConnection:
    """A Modbus TCP client for one endpoint. Not safe for concurrent requests: its owner (the device's
    task) issues one request at a time. Reconnection is the owner's job (with its own backoff)."""

    def __init__(self, host: str, port: int, unit_id: int, timeout_s: float) -> None:
        self.host, self.port, self.unit_id = host, port, unit_id
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        self.close()
        # retries=0: the per-request timeout is the request's whole budget; reconnect_delay=0: no
        # library reconnect loop competing with the owner's backoff.
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )
        self._client = client
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s + 0.5)
        except TimeoutError as err:
            self.close()
            raise DeviceOffline(f"connect to {self.host}:{self.port} timed out") from err
        except (ModbusException, OSError) as err:
            self.close()
            raise DeviceOffline(f"connect to {self.host}:{self.port} failed: {err}") from err
        if not ok:
            self.close()
            raise DeviceOffline(f"connect to {self.host}:{self.port} refused")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, table: Table, address: int, count: int) -> list[int]:
        if not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"read of {count} registers: must be 1..{MAX_READ_REGISTERS}")
        client = self._require_client()
        call = client.read_holding_registers if table == "holding" else client.read_input_registers
        what = f"read {table} {address}+{count}"
        response = await self._call(call(address, count=count, device_id=self.unit_id), what)
        registers = list(response.registers)
        if len(registers) != count:
            raise DeviceFault(f"{what}: got {len(registers)} registers")
        return registers

    async def write(self, address: int, values: list[int]) -> None:
        """Function 6 for one register, 16 for several."""
        client = self._require_client()
        if len(values) == 1:
            call = client.write_register(address, values[0], device_id=self.unit_id)
        else:
            call = client.write_registers(address, values, device_id=self.unit_id)
        await self._call(call, f"write {address}+{len(values)}")

    def _require_client(self) -> AsyncModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise DeviceOffline(f"not connected to {self.host}:{self.port}")
        return self._client

    async def _call(self, request: Awaitable[ModbusPDU], what: str) -> ModbusPDU:
        try:
            response = await request
        except ModbusIOException as err:
            if isinstance(err.__cause__, asyncio.CancelledError) or _being_cancelled():
                raise asyncio.CancelledError() from err
            self.close()  # a late answer must never be mistaken for the next request's
            raise DeviceOffline(f"{what}: no answer within {self.timeout_s}s") from err
        except ConnectionException as err:
            self.close()
            raise DeviceOffline(f"{what}: connection lost") from err
        except ModbusException as err:
            raise DeviceFault(f"{what}: {err}") from err
        if response.isError():
            raise ModbusExceptionResponse(response.exception_code, what)
        return response


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
