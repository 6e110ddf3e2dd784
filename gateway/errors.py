"""The gateway's own exception tree; library exceptions are translated into it in gateway.modbus."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class DeviceOffline(GatewayError):
    """The device does not answer: timeout, connection refused or lost. Status ``offline``."""


class DeviceFault(GatewayError):
    """The device answers, but with errors (Modbus exception, undecodable data, missing models).
    Status ``fault``."""


class ModbusExceptionResponse(DeviceFault):
    """The device answered a request with a Modbus exception code (e.g. 2: illegal data address)."""

    def __init__(self, code: int, request: str) -> None:
        super().__init__(f"Modbus exception {code} on {request}")
        self.code = code
        self.request = request


class ProfileError(GatewayError):
    """A profile or gateway configuration that cannot work (unknown metric, bad register, …)."""


class CommandRejected(GatewayError):
    """A command that is invalid as sent (unknown op, argument missing or outside limits)."""
