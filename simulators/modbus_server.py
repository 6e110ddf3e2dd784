"""The only module that touches pymodbus: serves one simulated device per TCP listener.

pymodbus 3.11 supplies framing and PDU encoding; this adapter adds what a device needs and pymodbus
does not do on its own:
- every request reads/writes the device model (``SimDevice.read``/``write``), which steps the physics;
- unknown function codes get exception 01 with the request's transaction id, unit and function code
  (pymodbus itself answers those with a fixed function code 0x28 and transaction id 0); a malformed
  request for a known function code gets 03;
- a paused device swallows requests without answering, so clients time out as with a dead device;
- unit ids other than the device's (and 255, "unit not used" in Modbus TCP) get exception 0B.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusBaseDeviceContext, ModbusServerContext
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from simulators.devices.base import SimDevice
from simulators.registers import ModbusError

log = logging.getLogger(__name__)

READ_FCS = frozenset({3, 6, 16, 22, 23})  # pymodbus reads back after writes with the write's fc
WRITE_FCS = frozenset({6, 16, 22, 23})
UNIT_NOT_USED = 255
_MBAP_LEN = 7


class _DeviceContext(ModbusBaseDeviceContext):
    """Holding registers only, straight from the device model; everything else is an illegal function."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    def reset(self) -> None:
        pass

    def getValues(self, func_code: int, address: int, count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if func_code not in READ_FCS:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            return self.device.read(address, count)
        except ModbusError as err:
            return ExcCodes(err.code)

    def setValues(self, func_code: int, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        if func_code not in WRITE_FCS:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            self.device.write(address, [int(v) for v in values])
        except ModbusError as err:
            return ExcCodes(err.code)
        return None


class _DeviceRequestHandler(ServerRequestHandler):
    """One client connection; answers each request from the device, or not at all while it is paused."""

    server: _DeviceServer

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        device = self.server.device
        if device.paused:
            return len(data)  # swallowed: the client sees a timeout
        try:
            used_len, pdu = self.framer.handleFrame(data, 0, 0)
        except ModbusIOException:
            return self._reject_undecodable(data)
        if pdu is not None:
            task = self.loop.create_task(self._answer(pdu, addr))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        return used_len

    def _reject_undecodable(self, data: bytes) -> int:
        if len(data) < _MBAP_LEN + 1:
            return len(data)
        frame_len = min(len(data), 6 + int.from_bytes(data[4:6], "big"))
        fc = data[_MBAP_LEN] & 0x7F
        code = (
            ExcCodes.ILLEGAL_VALUE
            if fc in self.server.decoder.list_function_codes()
            else ExcCodes.ILLEGAL_FUNCTION
        )
        # MBAP: transaction id, protocol 0, length 3 (unit + fc + code), unit; then the exception PDU.
        reply = data[0:2] + b"\x00\x00\x00\x03" + data[6:7] + bytes((fc | 0x80, int(code)))
        if self.transport is not None:
            self.transport.write(reply)  # type: ignore[attr-defined]
        return frame_len

    async def _answer(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        if self.server.device.paused:
            return
        try:
            context = self.server.context[pdu.dev_id]
            response = await pdu.update_datastore(context)
        except NoSuchIdException:
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:  # a simulator bug must not kill the connection; tell the client like a device would
            log.exception("device %s failed on %s", self.server.device.key, pdu)
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        if self.server.device.paused:
            return
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)


class _DeviceServer(ModbusTcpServer):
    def __init__(self, device: SimDevice, host: str, port: int) -> None:
        contexts = {device.unit_id: _DeviceContext(device)}
        contexts[UNIT_NOT_USED] = contexts[device.unit_id]
        super().__init__(ModbusServerContext(devices=contexts, single=False), address=(host, port))
        self.device = device
        self.tasks: set[asyncio.Task[None]] = set()

    def callback_new_connection(self) -> _DeviceRequestHandler:
        return _DeviceRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class DeviceServer:
    """A listening Modbus TCP server for one simulated device."""

    def __init__(self, device: SimDevice, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device = device
        self.host = host
        self.port = port  # 0: the OS picks a free port, known after start()
        self._server: _DeviceServer | None = None

    async def start(self) -> int:
        server = _DeviceServer(self.device, self.host, self.port)
        await server.serve_forever(background=True)
        self._server = server
        if self.port == 0:
            sockets: list[Any] = list(getattr(server.transport, "sockets", None) or [])
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()
        for task in list(server.tasks):
            task.cancel()
