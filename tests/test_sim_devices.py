"""Simulated devices without the network: controls through raw register writes, reversion, shutdown."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.sunspec import model
from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.devices.factory import build_device
from simulators.fleet import serve_fleet
from simulators.registers import IllegalAddress, IllegalValue
from simulators.scenario import Device

NOON = datetime(2025, 6, 21, 4, 30, tzinfo=UTC)


def _device(kind: str, profile: str, rated: float = 100_000.0, **sim: object) -> SimDevice:
    spec = Device(key=f"t-{kind}", site="s", kind=kind, profile=profile, rated_power_w=rated, sim=sim)
    device = build_device(spec, None, SimClock(factor=0, start=NOON))
    device.sync()
    return device


def _address(device: SimDevice, mid: int, name: str) -> int:
    starts = device.sunspec.starts  # type: ignore[attr-defined]
    return int(starts[mid]) + model(mid).points[name].offset


def test_wmaxlimpct_reverts_after_its_timeout() -> None:
    pv = _device("pv_inverter", "sunspec-pv-inverter", cloud_sigma=0.0, cloud_mean=1.0)
    free = pv.value("active_power_w")
    pv.write(_address(pv, 123, "WMaxLimPct_RvrtTms"), [60])
    pv.write(_address(pv, 123, "WMaxLimPct"), [10])
    pv.write(_address(pv, 123, "WMaxLim_Ena"), [1])
    assert pv.value("active_power_w") == pytest.approx(10_000)
    pv.clock.advance(30)
    assert pv.value("active_power_w") == pytest.approx(10_000)
    pv.clock.advance(31)
    assert pv.value("active_power_w") == pytest.approx(free, rel=0.02)
    assert pv.read(_address(pv, 123, "WMaxLim_Ena"), 1) == [0]


def test_pv_disconnect() -> None:
    pv = _device("pv_inverter", "sunspec-pv-inverter")
    pv.write(_address(pv, 123, "Conn"), [0])
    assert pv.value("active_power_w") == 0.0
    assert pv.value("operating_state") == 1  # OFF


def test_storage_rates_revert_to_local_operation() -> None:
    bat = _device("battery", "sunspec-battery", local_schedule=False)
    bat.write(_address(bat, 124, "InOutWRte_RvrtTms"), [120])
    bat.write(_address(bat, 124, "OutWRte"), [50])
    bat.write(_address(bat, 124, "StorCtl_Mod"), [2])
    assert bat.value("active_power_w") == pytest.approx(50_000)
    bat.clock.advance(121)
    assert bat.value("active_power_w") == 0.0
    assert bat.read(_address(bat, 124, "StorCtl_Mod"), 1) == [0]


def test_battery_reserve_and_disconnect() -> None:
    bat = _device("battery", "sunspec-battery", local_schedule=False, initial_soc_pct=30.0)
    bat.write(_address(bat, 124, "OutWRte"), [100])
    bat.write(_address(bat, 124, "StorCtl_Mod"), [2])
    bat.write(_address(bat, 802, "SoCRsvMin"), [400])  # SoC_SF = -1: 40.0 %, above the present SoC
    assert bat.value("active_power_w") == 0.0
    bat.write(_address(bat, 802, "SoCRsvMin"), [0])
    assert bat.value("active_power_w") == pytest.approx(100_000)
    bat.write(_address(bat, 802, "SetOp"), [2])  # DISCONNECT
    assert bat.value("active_power_w") == 0.0
    with pytest.raises(IllegalValue):
        bat.write(_address(bat, 802, "SetOp"), [3])


@given(st.integers(0, 0xFFFF))
def test_wmaxlimpct_accepts_exactly_0_to_100(raw: int) -> None:
    pv = _PV
    address = _address(pv, 123, "WMaxLimPct")
    if raw <= 100:
        pv.write(address, [raw])
        assert pv.read(address, 1) == [raw]
    else:
        with pytest.raises(IllegalValue):
            pv.write(address, [raw])


_PV = _device("pv_inverter", "sunspec-pv-inverter")


def test_value_rejects_unknown_and_foreign_metrics() -> None:
    hydro = _device("hydro", "lixian-hydro-v1", rated=1_000_000.0)
    assert hydro.value("reservoir_level_m") > 0
    with pytest.raises(KeyError, match="catalogue"):
        hydro.value("no_such_metric")
    with pytest.raises(KeyError, match="does not provide"):
        hydro.value("soc_pct")
    with pytest.raises(IllegalAddress):
        hydro.read(50, 1)


async def test_fleet_shuts_down_on_cancellation() -> None:
    ready = asyncio.Event()
    ports: list[int] = []

    async def run() -> None:
        async with serve_fleet("default", base_port=0, clock=SimClock(factor=0, start=NOON)) as fleet:
            ports.extend(ep.port for ep in fleet.endpoints.values())
            ready.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for port in ports:  # every listener is gone: the ports can be bound again
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def test_registers_encode_the_physics_within_their_resolution() -> None:
    from simulators.devices.sunspec_device import SunSpecDevice
    from simulators.scenario import load_scenario

    scenario = load_scenario("default")
    clock = SimClock(factor=0, start=NOON)
    for spec in scenario.devices:
        if spec.kind == "charge_point":  # piles are OCPP simulators, not Modbus register images
            continue
        device = build_device(spec, scenario.site(spec.site), clock)
        device.sync()
        assert set(device.metrics()) == set(device.resolutions()), spec.key
        if not isinstance(device, SunSpecDevice):
            continue
        for metric, (mid, point) in device.POINT_OF_METRIC.items():
            if metric == "power_factor":
                continue  # SunSpec PF is in percent
            read = device.sunspec.get(mid, point)
            assert read is not None, (spec.key, metric)
            want = device.value(metric)
            assert abs(read - want) <= device.resolution(metric) / 2 + 1e-6, (spec.key, metric, read, want)
