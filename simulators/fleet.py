"""Serving many simulated devices at once: ``serve_fleet(scenario)`` and ``serve_devices(specs)``.

Each device gets its own Modbus TCP listener, on consecutive ports from ``base_port`` (or OS-chosen free
ports with ``base_port=0``, for tests running in parallel).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.devices.factory import build_devices
from simulators.modbus_server import DeviceServer
from simulators.scenario import (
    MODBUS_KINDS,
    PROFILE_OF_KIND,
    Device,
    DeviceKind,
    Scenario,
    Site,
    load_scenario,
)

START_BATCH = 100  # listeners opened concurrently


class Endpoint(NamedTuple):
    """Where a simulated device answers (a tuple, so endpoints sort and pickle)."""

    host: str
    port: int
    unit_id: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Fleet:
    clock: SimClock
    devices: dict[str, SimDevice]
    specs: dict[str, Device]
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    scenario: Scenario | None = None

    def device(self, key: str) -> SimDevice:
        try:
            return self.devices[key]
        except KeyError:
            raise KeyError(f"no simulated device {key!r}") from None

    def __len__(self) -> int:
        return len(self.devices)


@asynccontextmanager
async def serve_devices(
    specs: Iterable[Device | tuple[str, int]],
    *,
    sites: Iterable[Site] = (),
    host: str = "127.0.0.1",
    base_port: int = 15020,
    clock: SimClock | None = None,
    scenario: Scenario | None = None,
) -> AsyncIterator[Fleet]:
    """Serve devices until the block exits or is cancelled.

    ``specs`` holds scenario devices (non-Modbus kinds are skipped) and/or ``(kind, count)`` pairs, which
    stand for ``generate_devices(kind, count)``.
    """
    clock = clock or SimClock()
    modbus_specs = [s for s in _expand(specs) if s.kind in MODBUS_KINDS]
    devices = build_devices(modbus_specs, sites, clock)
    fleet = Fleet(clock=clock, devices=devices, specs={s.key: s for s in modbus_specs}, scenario=scenario)
    now = clock.now()
    for d in devices.values():
        d.sync(now)  # fills the images and the solar cache before the first client asks
    servers = [
        DeviceServer(devices[s.key], host, base_port + i if base_port else 0)
        for i, s in enumerate(modbus_specs)
    ]
    started: list[DeviceServer] = []
    try:
        for i in range(0, len(servers), START_BATCH):
            batch = servers[i : i + START_BATCH]
            results = await asyncio.gather(*(s.start() for s in batch), return_exceptions=True)
            started.extend(s for s, r in zip(batch, results, strict=True) if not isinstance(r, BaseException))
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise RuntimeError(
                    f"could not start {len(errors)} device server(s): {errors[0]}"
                ) from errors[0]
        for s in servers:
            fleet.endpoints[s.device.key] = Endpoint(host, s.port, s.device.unit_id)
        yield fleet
    finally:
        await asyncio.shield(asyncio.gather(*(s.stop() for s in started), return_exceptions=True))


@asynccontextmanager
async def serve_fleet(
    scenario: Scenario | str | Path,
    host: str = "127.0.0.1",
    base_port: int = 15020,
    clock: SimClock | None = None,
) -> AsyncIterator[Fleet]:
    """Serve a scenario's Modbus devices; the clock defaults to the scenario's ``time_factor``/``start``."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    clock = clock or SimClock(scenario.time_factor, scenario.start)
    modbus = scenario.modbus_part()  # charge points are OCPP piles: simulators.ocpp runs them
    async with serve_devices(
        modbus.devices, sites=scenario.sites, host=host, base_port=base_port, clock=clock, scenario=modbus
    ) as fleet:
        yield fleet


DEFAULT_RATED_W = {
    "pv_inverter": 50_000.0,
    "battery": 250_000.0,
    "meter": 1_000_000.0,
    "hydro": 1_000_000.0,
    "load": 500_000.0,
}
_MODEL_NAMES = {
    "pv_inverter": "SIM-PV",
    "battery": "SIM-BESS",
    "meter": "SIM-METER",
    "hydro": "SIM-HYDRO",
    "load": "SIM-LOAD",
}


def generate_devices(
    kind: str,
    count: int,
    *,
    prefix: str | None = None,
    site: str = "bench-park",
    rated_power_w: float | None = None,
) -> list[Device]:
    """``count`` devices of one kind (e.g. 500 PV inverters for the gateway benchmark), each its own seed."""
    if kind not in PROFILE_OF_KIND:
        raise ValueError(f"cannot simulate kind {kind!r}; one of {', '.join(PROFILE_OF_KIND)}")
    rated = rated_power_w or DEFAULT_RATED_W[kind]
    prefix = prefix or f"bench-{kind.replace('_', '-')}"
    return [
        Device(
            key=f"{prefix}-{i:04d}",
            site=site,
            kind=cast(DeviceKind, kind),
            profile=PROFILE_OF_KIND[kind],
            vendor="Lishui Sim",
            model=f"{_MODEL_NAMES[kind]}-{rated / 1000:g}K",
            rated_power_w=rated,
        )
        for i in range(1, count + 1)
    ]


def generate_pv_inverters(
    count: int, *, rated_power_w: float = 50_000.0, prefix: str = "bench-pv"
) -> list[Device]:
    return generate_devices("pv_inverter", count, prefix=prefix, rated_power_w=rated_power_w)


def _expand(specs: Iterable[Device | tuple[str, int]]) -> list[Device]:
    out: list[Device] = []
    for spec in specs:
        if isinstance(spec, Device):
            out.append(spec)
        else:
            kind, count = spec
            out.extend(generate_devices(kind, count))
    return out


def endpoint_lines(fleet: Fleet, header: bool = True) -> list[str]:
    """One line per device: ``device  kind  host:port  unit`` (aligned)."""
    rows = [
        (key, fleet.devices[key].kind, ep.address, str(ep.unit_id)) for key, ep in fleet.endpoints.items()
    ]
    if header:
        rows.insert(0, ("device", "kind", "host:port", "unit"))
    widths: Sequence[int] = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
