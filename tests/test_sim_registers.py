"""Register images: SunSpec layout and scaling round trips, write rules, vendor words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.sunspec import END_MODEL_ID, MARKER, model
from simulators.clock import SimClock
from simulators.devices.factory import build_device
from simulators.devices.vendor_words import i16, i32, to_u32, u16, u32
from simulators.registers import IllegalAddress, IllegalValue, RegisterImage, WriteRule, pick_scale_factor
from simulators.scenario import Device
from simulators.sunspec_image import SunSpecImage


def _image(*models: int) -> SunSpecImage:
    ss = SunSpecImage(RegisterImage())
    for m in models:
        ss.add_model(m)
    ss.end()
    return ss


def test_model_chain_layout() -> None:
    ss = _image(1, 103, 120, 123)
    regs = ss.image
    assert tuple(regs.read(40000, 2)) == MARKER
    address, seen = 40002, []
    while True:
        mid, length = regs.read(address, 2)
        if mid == END_MODEL_ID:
            assert length == 0
            break
        assert length == model(mid).length
        seen.append(mid)
        address += 2 + length
    assert seen == [1, 103, 120, 123]
    with pytest.raises(IllegalAddress):
        regs.read(address + 1, 2)  # past the end model
    with pytest.raises(IllegalAddress):
        regs.read(39999, 2)


@settings(max_examples=200, deadline=None)
@given(
    point=st.sampled_from(
        [
            (103, "W", "W_SF"),
            (203, "W", "W_SF"),
            (802, "SoC", "SoC_SF"),
            (203, "PhVphA", "V_SF"),
            (802, "A", "A_SF"),
            (124, "OutWRte", "InOutWRte_SF"),
        ]
    ),
    sf=st.integers(-3, 3),
    value=st.floats(-1e7, 1e7, allow_nan=False),
)
def test_scaled_round_trip(point: tuple[int, str, str], sf: int, value: float) -> None:
    mid, name, sf_name = point
    ss = _image(mid)
    ss.set_sf(mid, sf_name, sf)
    p = model(mid).points[name]
    signed = p.type.startswith("int")
    lo, hi = (-32767, 32767) if signed else (0, 65534)
    ss.set(mid, name, value)
    got = ss.get(mid, name)
    assert got is not None
    raw = value / 10**sf
    if lo <= raw <= hi:
        assert got == pytest.approx(value, abs=0.5 * 10**sf + 1e-9)
    else:  # out of the type's range: clamped, never wrapped into nonsense
        assert got == pytest.approx((hi if raw > hi else lo) * 10**sf)


@given(st.integers(0, 2**32 - 1))
def test_acc32_rolls_over(value: int) -> None:
    ss = _image(103)
    ss.set_sf(103, "WH_SF", 0)
    ss.set_raw(103, "WH", value + 2**32)
    assert ss.get_raw(103, "WH") == value


@given(st.floats(0, 2**32 - 1))
def test_vendor_u32_round_trip(value: float) -> None:
    assert to_u32(u32(value)) == round(value)


@given(st.integers(-(2**31), 2**31 - 1))
def test_vendor_i32_words(value: int) -> None:
    hi, lo = i32(value)
    assert int.from_bytes(bytes([hi >> 8, hi & 0xFF, lo >> 8, lo & 0xFF]), "big", signed=True) == value


def test_vendor_words_clamp() -> None:
    assert u16(-5) == [0] and u16(70_000) == [0xFFFF]
    assert i16(-40_000) == [0x8000] and i16(-1) == [0xFFFF]


@given(st.floats(0.001, 1e12), st.booleans(), st.integers(1, 2))
def test_pick_scale_factor_fits(max_abs: float, signed: bool, registers: int) -> None:
    sf = pick_scale_factor(max_abs, signed, finest=-3, registers=registers)
    limit = (1 << (16 * registers - 1)) if signed else (1 << (16 * registers))
    assert max_abs / 10**sf < limit
    if sf > -3:
        assert max_abs / 10 ** (sf - 1) >= limit - 2  # and no coarser than needed


def test_write_rules() -> None:
    image = RegisterImage()
    image.define(0, [0, 0, 0])
    image.define(10, [0, 0])
    image.allow_write(WriteRule("setpoint", 10, 2, lambda r: to_u32(r) <= 100_000))
    assert [r.name for r in image.write(10, u32(50_000))] == ["setpoint"]
    assert image.read(10, 2) == u32(50_000)
    with pytest.raises(IllegalValue):
        image.write(10, u32(200_000))
    assert image.read(10, 2) == u32(50_000)  # a rejected write changes nothing
    with pytest.raises(IllegalAddress):
        image.write(0, [1])  # read-only
    with pytest.raises(IllegalAddress):
        image.write(11, [1, 2])  # runs past the point into unmapped space
    image.write(11, [7])  # one word of a 32-bit point, judged on the result
    assert to_u32(image.read(10, 2)) == 7


def test_every_device_kind_builds_a_valid_image() -> None:
    clock = SimClock(factor=0, start=datetime(2025, 6, 21, 4, 30, tzinfo=UTC))
    for kind, profile in (
        ("pv_inverter", "sunspec-pv-inverter"),
        ("battery", "sunspec-battery"),
        ("meter", "sunspec-meter"),
        ("hydro", "lixian-hydro-v1"),
        ("load", "lixian-flexload-v1"),
    ):
        for rated in (5_000.0, 250_000.0, 8_000_000.0):
            spec = Device(key=f"t-{kind}", site="s", kind=kind, profile=profile, rated_power_w=rated)
            device = build_device(spec, None, clock)
            device.sync()
            values = device.metrics()
            assert values["active_power_w"] == device.value("active_power_w")
            for address in device.registers.addresses:
                assert 0 <= device.registers.read(address, 1)[0] <= 0xFFFF
