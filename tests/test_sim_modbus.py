"""The simulators over real Modbus TCP, with pymodbus's own client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from core.sunspec import END_MODEL_ID, MARKER, decode, model, scaled
from simulators.clock import SimClock
from simulators.devices.vendor_words import to_u32, u32
from simulators.fleet import Fleet, endpoint_lines, serve_devices, serve_fleet

NOON = datetime(2025, 6, 21, 4, 30, tzinfo=UTC)  # 12:30 in Lixian


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet() -> AsyncIterator[Fleet]:
    async with serve_fleet("default", base_port=0, clock=SimClock(factor=0, start=NOON)) as f:
        yield f


async def _client(fleet: Fleet, key: str, request_timeout: float = 2.0) -> AsyncModbusTcpClient:
    ep = fleet.endpoints[key]
    client = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=request_timeout, retries=0)
    assert await client.connect()
    return client


async def _models(client: AsyncModbusTcpClient) -> dict[int, int]:
    """Walk the SunSpec chain: model id -> address of its ID register."""
    r = await client.read_holding_registers(40000, count=2, device_id=1)
    assert tuple(r.registers) == MARKER
    starts: dict[int, int] = {}
    address = 40002
    while True:
        r = await client.read_holding_registers(address, count=2, device_id=1)
        mid, length = r.registers
        if mid == END_MODEL_ID:
            assert length == 0
            return starts
        assert length == model(mid).length
        starts[mid] = address
        address += 2 + length


async def _point(client: AsyncModbusTcpClient, starts: dict[int, int], mid: int, name: str) -> float | None:
    p = model(mid).points[name]
    r = await client.read_holding_registers(starts[mid] + p.offset, count=p.size, device_id=1)
    raw = decode(p, r.registers)
    exponent = None
    if isinstance(p.sf, str):
        sf_point = model(mid).points[p.sf]
        sf_regs = await client.read_holding_registers(starts[mid] + sf_point.offset, count=1, device_id=1)
        exponent = decode(sf_point, sf_regs.registers)
    assert not isinstance(raw, str) and not isinstance(exponent, str | float)
    return scaled(raw, exponent)


async def _write_point(
    client: AsyncModbusTcpClient, starts: dict[int, int], mid: int, name: str, raw: int
) -> int:
    """Write a raw value; returns the exception code (0 = accepted)."""
    p = model(mid).points[name]
    r = await client.write_register(starts[mid] + p.offset, raw & 0xFFFF, device_id=1)
    return r.exception_code if r.isError() else 0


@pytest.mark.parametrize(
    ("key", "expected"),
    [("xdk-pv-1", [1, 103, 120, 123]), ("xdk-bess-1", [1, 120, 124, 802]), ("xdk-meter-grid", [1, 203])],
)
async def test_sunspec_marker_and_model_chain(fleet: Fleet, key: str, expected: list[int]) -> None:
    client = await _client(fleet, key)
    try:
        starts = await _models(client)
        assert list(starts) == expected
        common = model(1)
        r = await client.read_holding_registers(starts[1], count=common.length + 2, device_id=1)
        assert decode(common.points["SN"], r.registers[50:66]) == key
        assert decode(common.points["Mn"], r.registers[2:18]) == fleet.specs[key].vendor
    finally:
        client.close()


async def test_values_over_modbus_match_the_physics(fleet: Fleet) -> None:
    client = await _client(fleet, "xdk-pv-1")
    try:
        starts = await _models(client)
        w = await _point(client, starts, 103, "W")
        assert w == pytest.approx(fleet.device("xdk-pv-1").value("active_power_w"), abs=10)
        assert w is not None and w > 100_000  # clear-ish midsummer noon
        assert await _point(client, starts, 103, "Hz") == pytest.approx(50, abs=0.3)
        assert await _point(client, starts, 120, "WRtg") == 250_000
    finally:
        client.close()
    client = await _client(fleet, "xdk-bess-1")
    try:
        starts = await _models(client)
        soc = await _point(client, starts, 802, "SoC")
        assert soc == pytest.approx(fleet.device("xdk-bess-1").value("soc_pct"), abs=0.1)
    finally:
        client.close()


async def test_unmapped_registers_answer_exception_02(fleet: Fleet) -> None:
    client = await _client(fleet, "xdk-meter-grid")
    try:
        r = await client.read_holding_registers(39990, count=2, device_id=1)
        assert r.isError() and r.exception_code == 2
        r = await client.read_holding_registers(39998, count=4, device_id=1)  # straddles the marker
        assert r.isError() and r.exception_code == 2
        r = await client.read_holding_registers(40100, count=125, device_id=1)  # past the end model
        assert r.isError() and r.exception_code == 2
        r = await client.read_holding_registers(40000, count=125, device_id=1)
        assert not r.isError()
    finally:
        client.close()
    client = await _client(fleet, "wjc-hydro-1")
    try:
        assert not (await client.read_holding_registers(0, count=13, device_id=1)).isError()
        assert not (await client.read_holding_registers(100, count=3, device_id=1)).isError()
        for address, count in ((0, 14), (13, 1), (99, 2), (102, 2)):
            r = await client.read_holding_registers(address, count=count, device_id=1)
            assert r.isError() and r.exception_code == 2, (address, count)
    finally:
        client.close()


class _UnknownRequest(ModbusPDU):
    function_code = 0x41  # user-defined range: no device of ours implements it
    rtu_frame_size = 4

    def encode(self) -> bytes:
        return b"\x00\x01"

    def decode(self, data: bytes) -> None:
        pass


async def test_unknown_function_codes_answer_exception_01(fleet: Fleet) -> None:
    client = await _client(fleet, "xdk-pv-1")
    try:
        r = await client.execute(False, _UnknownRequest(dev_id=1))
        assert isinstance(r, ExceptionResponse)
        assert r.function_code == 0x41 | 0x80 and r.exception_code == 1
        # Function codes we do not serve (coils, input registers) are illegal functions too.
        r = await client.read_coils(0, count=1, device_id=1)
        assert r.isError() and r.exception_code == 1
        r = await client.read_input_registers(40000, count=2, device_id=1)
        assert r.isError() and r.exception_code == 1
        # and the connection still works afterwards
        assert not (await client.read_holding_registers(40000, count=2, device_id=1)).isError()
    finally:
        client.close()


async def test_writes_read_only_02_out_of_range_03(fleet: Fleet) -> None:
    client = await _client(fleet, "xdk-pv-1")
    try:
        starts = await _models(client)
        assert await _write_point(client, starts, 103, "W", 0) == 2
        assert await _write_point(client, starts, 123, "WMaxLimPct", 150) == 3
        assert await _write_point(client, starts, 123, "WMaxLim_Ena", 7) == 3
        r = await client.write_registers(40000, [0, 0], device_id=1)
        assert r.isError() and r.exception_code == 2
    finally:
        client.close()
    client = await _client(fleet, "wjc-hydro-1")
    try:
        r = await client.write_registers(100, u32(5_000_000), device_id=1)  # above the 2 MW rating
        assert r.isError() and r.exception_code == 3
        r = await client.write_register(102, 0, device_id=1)  # ramp limit 1 ... 10000
        assert r.isError() and r.exception_code == 3
        r = await client.write_register(0, 1, device_id=1)
        assert r.isError() and r.exception_code == 2
    finally:
        client.close()


async def test_wmaxlimpct_lowers_output(fleet: Fleet) -> None:
    device = fleet.device("xdk-pv-2")
    client = await _client(fleet, "xdk-pv-2")
    try:
        starts = await _models(client)
        before = await _point(client, starts, 103, "W")
        assert before is not None and before > 100_000
        assert await _write_point(client, starts, 123, "WMaxLimPct", 20) == 0
        assert await _write_point(client, starts, 123, "WMaxLim_Ena", 1) == 0
        after = await _point(client, starts, 103, "W")
        assert after is not None and after <= 0.2 * 250_000 + 10
        assert await _point(client, starts, 103, "St") == 5  # THROTTLED
        assert device.value("active_power_w") <= 50_000 + 1e-6
        assert device.value("active_power_limit_pct") == 20
        assert await _write_point(client, starts, 123, "WMaxLim_Ena", 0) == 0
        assert await _point(client, starts, 103, "W") == pytest.approx(before, abs=10)
    finally:
        client.close()


async def test_battery_follows_storage_controls(fleet: Fleet) -> None:
    client = await _client(fleet, "xdk-bess-1")
    try:
        starts = await _models(client)
        assert await _write_point(client, starts, 124, "OutWRte", 40) == 0
        assert await _write_point(client, starts, 124, "StorCtl_Mod", 2) == 0  # DISCHARGE
        assert await _point(client, starts, 802, "W") == pytest.approx(200_000, abs=100)  # 40 % of 500 kW
        assert await _write_point(client, starts, 124, "OutWRte", -30) == 0  # negative: charge
        assert await _point(client, starts, 802, "W") == pytest.approx(-150_000, abs=100)
        assert await _point(client, starts, 124, "ChaSt") == 4  # CHARGING
        assert await _write_point(client, starts, 124, "OutWRte", 101) == 3
        assert await _write_point(client, starts, 124, "StorCtl_Mod", 0) == 0
    finally:
        client.close()


async def test_hydro_setpoint_ramps_and_flexload_curtails(fleet: Fleet) -> None:
    hydro = fleet.device("wjc-hydro-1")
    client = await _client(fleet, "wjc-hydro-1")
    try:
        start_w = to_u32((await client.read_holding_registers(4, count=2, device_id=1)).registers)
        assert start_w == pytest.approx(900_000, abs=1)
        assert not (await client.write_register(102, 100, device_id=1)).isError()  # 100 kW/min
        assert not (await client.write_registers(100, u32(1_500_000), device_id=1)).isError()
        fleet.clock.advance(60)
        now_w = to_u32((await client.read_holding_registers(4, count=2, device_id=1)).registers)
        assert now_w == pytest.approx(1_000_000, abs=1_000)
        assert hydro.value("active_power_w") == pytest.approx(now_w, abs=1)
        assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [1]
    finally:
        client.close()
    load = fleet.device("xdk-load-machining")
    client = await _client(fleet, "xdk-load-machining")
    try:
        assert not (await client.write_registers(100, u32(150_000), device_id=1)).isError()
        regs = (await client.read_holding_registers(0, count=13, device_id=1)).registers
        assert to_u32(regs[8:10]) == pytest.approx(150_000, abs=1)  # curtailment in force
        assert regs[10] == 2  # curtailed
        assert load.value("curtailment_w") == pytest.approx(150_000, abs=1)
        r = await client.write_registers(100, u32(10_000_000), device_id=1)  # above the maximum curtailable
        assert r.isError() and r.exception_code == 3
        assert not (await client.write_registers(100, u32(0), device_id=1)).isError()
        assert to_u32((await client.read_holding_registers(13, count=2, device_id=1)).registers) == 240_000
        before = load.value("active_power_w")
        assert not (await client.write_registers(102, u32(100_000), device_id=1)).isError()
        regs = (await client.read_holding_registers(0, count=17, device_id=1)).registers
        assert to_u32(regs[0:2]) == pytest.approx(before + 100_000, rel=0.01)  # the profile plus the raise
        assert to_u32(regs[15:17]) == pytest.approx(100_000, abs=1) and regs[10] == 3  # raised
        assert to_u32((await client.read_holding_registers(102, count=2, device_id=1)).registers) == 100_000
        r = await client.write_registers(102, u32(240_001), device_id=1)  # above the maximum raisable
        assert r.isError() and r.exception_code == 3
        assert not (await client.write_registers(102, u32(0), device_id=1)).isError()
        assert load.value("curtailment_w") == 0 and load.physics.raise_w == 0  # type: ignore[attr-defined]
    finally:
        client.close()


async def test_park_meter_sums_its_site(fleet: Fleet) -> None:
    meter = fleet.device("xdk-meter-grid")
    w = meter.value("active_power_w")
    site = [k for k, s in fleet.specs.items() if s.site == "xdk-park" and s.kind != "meter"]
    sign = {"load": 1, "pv_inverter": -1, "battery": -1}
    devices_w = sum(sign[fleet.specs[k].kind] * fleet.device(k).value("active_power_w") for k in site)
    own = w - devices_w
    assert 0 < own < 300_000 * 1.3  # the meter's own base load, within its profile and noise


async def test_unit_ids(fleet: Fleet) -> None:
    client = await _client(fleet, "xdk-pv-1")
    try:
        assert not (await client.read_holding_registers(40000, count=2, device_id=255)).isError()
        r = await client.read_holding_registers(40000, count=2, device_id=7)
        assert r.isError() and r.exception_code == 0x0B
    finally:
        client.close()


async def test_pause_makes_requests_time_out(fleet: Fleet) -> None:
    device = fleet.device("xdk-load-kiln")
    device.pause()
    client = await _client(fleet, "xdk-load-kiln", request_timeout=0.3)
    try:
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=2, device_id=1)
    finally:
        client.close()
        device.resume()
    client = await _client(fleet, "xdk-load-kiln")
    try:
        assert not (await client.read_holding_registers(0, count=2, device_id=1)).isError()
    finally:
        client.close()


def test_endpoint_lines(fleet: Fleet) -> None:
    lines = endpoint_lines(fleet)
    assert lines[0].split() == ["device", "kind", "host:port", "unit"]
    assert len(lines) == 1 + len(fleet.endpoints)
    assert lines[1].split()[0] == "xdk-pv-1" and lines[1].split()[2] == fleet.endpoints["xdk-pv-1"].address


async def test_500_inverters_start_quickly_and_answer_a_poll_round() -> None:
    t0 = time.perf_counter()
    async with serve_devices([("pv_inverter", 500)], base_port=0, clock=SimClock(factor=60, start=NOON)) as f:
        started = time.perf_counter() - t0
        assert len(f.endpoints) == 500
        assert len(set(f.endpoints.values())) == 500
        clients = [
            AsyncModbusTcpClient(ep.host, port=ep.port, timeout=2, retries=0) for ep in f.endpoints.values()
        ]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            t1 = time.perf_counter()
            # One 1 s poll round: every inverter's whole model 103 block.
            results = await asyncio.gather(
                *(c.read_holding_registers(40070, count=52, device_id=1) for c in clients)
            )
            poll = time.perf_counter() - t1
        finally:
            for c in clients:
                c.close()
        assert all(not r.isError() for r in results)
        assert started < 10.0, f"500 servers took {started:.1f} s to start"
        assert poll < 1.0, f"a poll round over 500 devices took {poll:.2f} s"
