"""Profiles, decoding, the read planner and command limits, without any I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import sunspec
from core.metrics import BY_NAME
from core.payloads import Command
from gateway import codec, profile
from gateway.commands import check_command
from gateway.drivers import ModbusDriver
from gateway.errors import CommandRejected, ProfileError
from gateway.plan import MAX_REGISTERS, Span, plan_reads
from gateway.profile import REGISTER_SIZE


@pytest.mark.parametrize("name", profile.shipped_names())
def test_shipped_profiles_load_and_fit_the_catalogue(name: str) -> None:
    p = profile.load(name)
    assert profile.check(p) == []
    metrics = [r.metric for r in p.modbus.registers] if p.modbus else [m.metric for m in p.sunspec.points]  # type: ignore[union-attr]
    assert all(m is None or m in BY_NAME for m in metrics)


def test_the_expected_profiles_ship() -> None:
    assert set(profile.shipped_names()) >= {
        "sunspec-pv-inverter",
        "sunspec-battery",
        "sunspec-meter",
        "lixian-hydro-v1",
        "lixian-flexload-v1",
    }
    assert profile.load("sunspec-pv-inverter").sunspec.models == [1, 103, 120, 123]  # type: ignore[union-attr]


def test_bad_profiles_are_refused() -> None:
    base = """
name: bad
kind: x
protocol: modbus
modbus:
  registers:
    - {name: p, address: 0, type: int32, unit: W, metric: %s}
    - {name: q, address: 1, type: uint16}
"""
    with pytest.raises(ProfileError, match="unknown metric"):
        profile.parse(base % "no_such_metric")
    with pytest.raises(ProfileError, match="overlaps"):
        profile.parse(base % "active_power_w")
    with pytest.raises(ProfileError, match=r"needs multiplier 0\.01"):
        profile.parse("""
name: bad
kind: meter
protocol: sunspec
sunspec: {models: [1, 203], points: [{point: 203.PF, metric: power_factor}]}
""")


@given(st.sampled_from(sorted(REGISTER_SIZE)), st.sampled_from(["big", "little"]), st.data())
def test_register_words_round_trip(type_: str, order: str, data: st.DataObject) -> None:
    if type_ == "float32":
        value: float = data.draw(st.floats(width=32, allow_nan=False))
    else:
        bits = 16 * REGISTER_SIZE[type_]
        signed = not type_.startswith("u")
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        value = data.draw(st.integers(low, high))
    words = codec.encode_words(type_, value, order)
    assert all(0 <= w <= 0xFFFF for w in words) and len(words) == REGISTER_SIZE[type_]
    assert codec.decode_words(type_, words, order) == value


def test_decoding_known_words() -> None:
    assert codec.decode_words("int32", [0xFFFF, 0xFFFE]) == -2
    assert codec.decode_words("uint32", [0x0001, 0x0000]) == 65536
    assert codec.decode_words("uint32", [0x0000, 0x0001], "little") == 65536
    assert codec.decode_words("int16", [0x8000]) == -32768
    with pytest.raises(ValueError):
        codec.encode_words("uint16", 70000)


@given(st.integers(-32767, 32767), st.integers(-4, 4))
def test_scale_factor_round_trip(raw: int, sf: int) -> None:
    value = raw * codec.scale_of(None, sf)
    assert codec.to_raw(value, codec.scale_of(None, sf), "int16") == raw


def test_scale_register_and_fixed_scale_decode() -> None:
    p = profile.parse("""
name: sf
kind: x
protocol: modbus
modbus:
  registers:
    - {name: power, address: 10, type: int32, scale_register: 12, unit: W, metric: active_power_w}
    - {name: energy, address: 20, type: uint32, scale: 1000, unit: Wh, metric: energy_export_wh}
""")
    driver = ModbusDriver(p)
    image = {
        ("holding", 10): 0xFFFF,
        ("holding", 11): 0xFC18,
        ("holding", 12): 0xFFFF,  # -1000 x 10^-1
        ("holding", 20): 0x0001,
        ("holding", 21): 0x0002,
    }
    reading = driver.decode(image)
    assert reading.metrics == {"active_power_w": pytest.approx(-100.0), "energy_export_wh": 65538000.0}
    # 10..12 are contiguous and known-mapped (all listed); 20 is far away: two reads
    assert driver.blocks == [Span("holding", 10, 3), Span("holding", 20, 2)]


def test_sunspec_point_scale_factor() -> None:
    model = sunspec.model(103)
    w, sf = model.points["W"], model.points["W_SF"]
    assert sunspec.scaled(
        sunspec.decode(w, sunspec.encode(w, 1234)), sunspec.decode(sf, sunspec.encode(sf, -1))
    ) == (pytest.approx(123.4))


def test_planner_never_reads_unmapped_registers() -> None:
    mapped = {0, 1, 2, 3, 10, 11}
    blocks = plan_reads(
        [Span("holding", 0, 2), Span("holding", 3, 1), Span("holding", 10, 2)],
        lambda _t, a: a in mapped,
        max_gap=8,
    )
    # 2 is known-mapped, so 0..3 is one read; 4..9 are not, so 10..11 is a read of its own
    assert blocks == [Span("holding", 0, 4), Span("holding", 10, 2)]
    assert plan_reads(
        [Span("holding", 0, 1), Span("holding", 2, 1)], lambda _t, a: a in mapped, max_gap=0
    ) == [Span("holding", 0, 1), Span("holding", 2, 1)]
    assert plan_reads([Span("holding", 0, 1), Span("input", 1, 1)], lambda _t, _a: True, max_gap=8) == [
        Span("holding", 0, 1),
        Span("input", 1, 1),
    ]


@given(
    st.lists(st.tuples(st.integers(0, 600), st.integers(1, 130)), min_size=1, max_size=12),
    st.sets(st.integers(0, 800)),
    st.integers(0, 20),
)
def test_planner_properties(spans: list[tuple[int, int]], extra_mapped: set[int], max_gap: int) -> None:
    wanted = {a for start, count in spans for a in range(start, start + count)}
    mapped = wanted | extra_mapped
    blocks = plan_reads([Span("holding", s, c) for s, c in spans], lambda _t, a: a in mapped, max_gap)
    read = [a for b in blocks for a in range(b.start, b.end)]
    assert all(1 <= b.count <= MAX_REGISTERS for b in blocks)
    assert set(read) >= wanted  # covers everything
    assert set(read) <= mapped  # touches nothing unmapped
    assert len(read) == len(set(read))  # reads nothing twice


def test_command_limits() -> None:
    hydro = profile.load("lixian-hydro-v1")
    reported = {"rated_power_w": 200000.0}

    def cmd(**args: float | str | bool) -> Command:
        return Command(id="x", op="set_output_setpoint", args=args)

    assert check_command(cmd(watts=150000), hydro, reported).target_value == 150000
    with pytest.raises(CommandRejected, match=r"outside 0\.\.200000"):
        check_command(cmd(watts=200001), hydro, reported)
    with pytest.raises(CommandRejected, match="outside"):
        check_command(cmd(watts=-1), hydro, reported)
    with pytest.raises(CommandRejected, match="has not reported rated_power_w"):
        check_command(cmd(watts=1), hydro, {})
    with pytest.raises(CommandRejected, match="needs a number"):
        check_command(cmd(watts=True), hydro, reported)
    with pytest.raises(CommandRejected, match="unexpected argument"):
        check_command(cmd(watts=1, pct=3), hydro, reported)
    with pytest.raises(CommandRejected, match="unknown op"):
        check_command(Command(id="x", op="self_destruct"), hydro, reported)
    battery = profile.load("sunspec-battery")
    checked = check_command(
        Command(id="b", op="set_battery_power", args={"watts": -2500}), battery, {"rated_power_w": 5000.0}
    )
    assert checked.target_value == -50.0  # % of WChaMax, negative = charge
