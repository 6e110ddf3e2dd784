"""Resource models: what each resource can give now, for how long, and the commands it gets."""

from __future__ import annotations

import math

import pytest

from core.dr.fleet import DeviceInfo, build_resources
from core.dr.resources import (
    Direction,
    EvChargingSite,
    Flexibility,
    FlexibleLoad,
    HydroUnit,
    Resource,
    ResourceKind,
    StorageUnit,
    Window,
)
from core.topics import SITE_TARGET

HOUR = Window(remaining_min=60, step_min=15)


def hydro(**kw: float) -> HydroUnit:
    args: dict[str, float] = dict(rated_kw=1000, output_kw=400, inflow_kw=300, reservoir_kwh=10_000)
    args.update(kw)
    return HydroUnit("wjc-hydro-1", "wjc-hydro", **args)


def test_hydro_up_regulation_is_bounded_by_rating_water_and_reservoir() -> None:
    assert hydro().flexibility(Direction.REDUCE, HOUR).available_kw == 600  # rating binds
    # Reservoir energy spread over the window: 300 kW inflow + 200 kWh / 1 h = 500 kW -> 100 kW more.
    assert hydro(reservoir_kwh=200).flexibility(Direction.REDUCE, HOUR).available_kw == pytest.approx(100)
    # The longer the window, the less the reservoir can add per hour.
    two_hours = Window(remaining_min=120)
    assert hydro(reservoir_kwh=200).flexibility(Direction.REDUCE, two_hours).available_kw == pytest.approx(0)
    assert hydro(output_kw=1200).flexibility(Direction.REDUCE, HOUR).available_kw == 0  # never negative


def test_hydro_ramp_is_per_step_and_tier_free() -> None:
    flex = hydro(ramp_kw_per_min=10).flexibility(Direction.REDUCE, HOUR)
    assert flex.tier is None and flex.kind is ResourceKind.HYDRO
    assert flex.ramp_kw == 150 and flex.bounds_kw == (0.0, 150.0)
    # Already giving 300 kW: this step may move 150 kW either way.
    assert hydro(ramp_kw_per_min=10).flexibility(Direction.REDUCE, HOUR, 300).bounds_kw == (150.0, 450.0)


def test_hydro_valley_filling_holds_water_back_and_commands_setpoints() -> None:
    unit = hydro(min_output_kw=100)
    assert unit.flexibility(Direction.RAISE, HOUR).available_kw == 300
    up = unit.command(Direction.REDUCE, 250, hold_s=120)
    assert (up.site, up.device, up.command.op) == ("wjc-hydro", "wjc-hydro-1", "set_output_setpoint")
    assert up.command.args == {"watts": 650_000} and up.command.hold_s == 120
    assert unit.command(Direction.RAISE, 250, hold_s=120).command.args == {"watts": 150_000}
    assert unit.restore(60).command.args == {"watts": 1_000_000}


def load(**kw: float) -> FlexibleLoad:
    args: dict[str, float] = dict(tier=5, load_kw=800, floor_kw=300)
    args.update(kw)
    return FlexibleLoad("mx-load-1", "mx-park", **args)  # type: ignore[arg-type]


def test_flexible_load_curtailable_is_current_minus_floor_within_device_limit() -> None:
    assert load().flexibility(Direction.REDUCE, HOUR).available_kw == 500
    assert load(max_curtailable_kw=200).flexibility(Direction.REDUCE, HOUR).available_kw == 200
    assert load(load_kw=200).flexibility(Direction.REDUCE, HOUR).available_kw == 0
    assert load().flexibility(Direction.REDUCE, HOUR).tier == 5


def test_tier_zero_load_offers_nothing_and_refuses_commands() -> None:
    protected = load(tier=0, raisable_kw=100)
    assert protected.flexibility(Direction.REDUCE, HOUR).available_kw == 0
    assert protected.flexibility(Direction.RAISE, HOUR).available_kw == 0
    with pytest.raises(ValueError, match="tier 0"):
        protected.command(Direction.REDUCE, 100, hold_s=60)
    # Even a hand-made flexibility of tier 0 has zero bounds.
    assert Flexibility("x", ResourceKind.FLEXIBLE_LOAD, 0, 1.0, 500).bounds_kw == (0.0, 0.0)


def test_flexible_load_duration_limits_and_rebound() -> None:
    assert load(max_duration_min=45).flexibility(Direction.REDUCE, HOUR).available_kw == 0
    assert (
        load(max_duration_min=90, curtailed_for_min=20).flexibility(Direction.REDUCE, HOUR).available_kw
        == 500
    )
    assert (
        load(max_duration_min=90, curtailed_for_min=40).flexibility(Direction.REDUCE, HOUR).available_kw == 0
    )
    # 400 kW for 60 min, half comes back over 30 min: 200 kWh / 0.5 h = 400 kW.
    assert load(rebound_fraction=0.5, rebound_min=30).rebound(400, 60) == (pytest.approx(400), 30)
    cmd = load(max_curtailable_kw=300).command(Direction.REDUCE, 450, hold_s=60).command
    assert cmd.op == "set_curtailment" and cmd.args == {"watts": 300_000}


def test_flexible_load_valley_filling_raises_within_headroom_and_restores_the_raise() -> None:
    raisable = load(raisable_kw=300, max_load_kw=1000)
    assert raisable.flexibility(Direction.RAISE, HOUR).available_kw == 200  # the ceiling binds
    assert load(raisable_kw=300).flexibility(Direction.RAISE, HOUR).available_kw == 300
    assert load().flexibility(Direction.RAISE, HOUR).available_kw == 0  # no raise control, no raise
    assert load(raisable_kw=300, max_duration_min=30).flexibility(Direction.RAISE, HOUR).available_kw == 0
    up = raisable.command(Direction.RAISE, 450, hold_s=60).command
    assert up.op == "set_load_raise" and up.args == {"watts": 300_000} and up.hold_s == 60
    assert raisable.restore(60, Direction.RAISE).command.op == "set_load_raise"
    assert raisable.restore(60, Direction.RAISE).command.args == {"watts": 0.0}
    assert raisable.restore(60).command.op == "set_curtailment"
    with pytest.raises(ValueError, match="tier 0"):
        load(tier=0, raisable_kw=300).command(Direction.RAISE, 100, hold_s=60)


def storage(**kw: float) -> StorageUnit:
    args: dict[str, float] = dict(
        capacity_kwh=1000, soc_pct=60, power_kw=0, discharge_limit_kw=500, charge_limit_kw=400
    )
    args.update(kw)
    return StorageUnit("xdk-bess-1", "xdk-park", **args)


def test_storage_discharge_bounded_by_soc_power_and_operating_point() -> None:
    assert storage(soc_pct=80).flexibility(Direction.REDUCE, HOUR).available_kw == 500  # power limit binds
    assert storage().flexibility(Direction.REDUCE, HOUR).available_kw == pytest.approx(475)  # 50% x 0.95
    # (30 - 10)% of 1000 kWh at 95% over 1 h = 190 kW.
    assert storage(soc_pct=30).flexibility(Direction.REDUCE, HOUR).available_kw == pytest.approx(190)
    # Charging at 200 kW now: stopping that counts as reduction too.
    assert storage(soc_pct=30, power_kw=-200).flexibility(
        Direction.REDUCE, HOUR
    ).available_kw == pytest.approx(390)
    assert storage(soc_pct=5).flexibility(Direction.REDUCE, HOUR).available_kw == 0
    assert storage().flexibility(Direction.REDUCE, HOUR).tier is None


def test_storage_valley_filling_bounded_by_headroom() -> None:
    # (95 - 60)% of 1000 kWh / 0.95 over 1 h = 368.4 kW, under the 400 kW charge limit.
    assert storage().flexibility(Direction.RAISE, HOUR).available_kw == pytest.approx(350 / 0.95)
    assert storage(soc_pct=95).flexibility(Direction.RAISE, HOUR).available_kw == 0
    cmd = storage().command(Direction.RAISE, 300, hold_s=60).command
    assert cmd.op == "set_battery_power" and cmd.args == {"watts": -300_000}
    assert storage().command(Direction.REDUCE, 900, hold_s=60).command.args == {"watts": 500_000}


def test_ev_site_flexibility_above_floor_and_site_command() -> None:
    ev = EvChargingSite("lpu-charging", tier=7, charging_kw=600, floor_kw=150, site_limit_kw=1000)
    assert ev.flexibility(Direction.REDUCE, HOUR).available_kw == 450
    assert ev.flexibility(Direction.RAISE, HOUR).available_kw == 0  # a limit cannot make EVs draw more
    sent = ev.command(Direction.REDUCE, 500, hold_s=60, expires_at=None)
    assert (sent.site, sent.device) == ("lpu-charging", SITE_TARGET)
    assert sent.command.op == "set_site_charging_limit"
    assert sent.command.args == {"watts": 150_000}  # never below the floor
    assert ev.restore(60).command.op == "clear_site_charging_limit"


def test_models_satisfy_the_resource_protocol() -> None:
    ev = EvChargingSite("s", tier=3, charging_kw=1, floor_kw=0, site_limit_kw=2)
    for model in (hydro(), load(), storage(), ev):
        assert isinstance(model, Resource)


def test_flexibility_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Flexibility("x", ResourceKind.STORAGE, None, 1.0, -1)
    with pytest.raises(ValueError):
        Flexibility("x", ResourceKind.FLEXIBLE_LOAD, 10, 1.0, 1)
    with pytest.raises(ValueError):
        Flexibility("x", ResourceKind.STORAGE, None, math.nan, 1)
    with pytest.raises(ValueError):
        Window(remaining_min=0)


def flexload_device(key: str = "fl", rated_w: float = 1e6, **attrs: float) -> DeviceInfo:
    return DeviceInfo(11, key, "park", 1, "load", "lixian-flexload-v1", rated_w, 4, "lidan", attrs)


def test_a_flexible_loads_limits_come_from_its_telemetry_bounded_by_the_agreement() -> None:
    reported = {"active_power_w": 600_000.0, "max_raisable_w": 120_000.0, "max_curtailable_w": 250_000.0}
    cases = [
        ({}, {"active_power_w": 600_000.0}, 300, 400),  # neither: the defaults, 30 % and 40 % of rated
        ({}, reported, 120, 250),  # the device's own limits
        ({"raisable_w": 200_000, "max_curtailable_w": 300_000}, reported, 120, 250),  # device binds
        ({"raisable_w": 80_000, "max_curtailable_w": 100_000}, reported, 80, 100),  # agreement binds
    ]
    for attrs, live, raisable_kw, curtailable_kw in cases:
        d = flexload_device(**attrs)
        model = build_resources([d], {d.id: live}).resources[d.key]
        assert isinstance(model, FlexibleLoad)
        assert model.raisable_kw == pytest.approx(raisable_kw), attrs
        assert model.max_curtailable_kw == pytest.approx(curtailable_kw), attrs
        # The command never asks more than the device's own limit (the gateway would refuse it).
        up = model.command(Direction.RAISE, 10_000, hold_s=60).command.args["watts"]
        assert up == pytest.approx(raisable_kw * 1000)


def test_a_reported_raise_gives_the_load_without_it_and_the_response_in_each_direction() -> None:
    d = flexload_device()
    raised = {"active_power_w": 750_000.0, "curtailment_w": 0.0, "load_raise_w": 150_000.0}
    snap = build_resources([d], {d.id: raised})
    model = snap.resources[d.key]
    assert isinstance(model, FlexibleLoad) and model.load_kw == pytest.approx(600)  # 750 - 150 raised
    # Headroom below the ceiling (rated) is from the load without the raise: min(300, 1000 - 600).
    assert model.flexibility(Direction.RAISE, HOUR, 150).available_kw == pytest.approx(300)
    assert snap.reported_response_kw(d.key, Direction.RAISE) == pytest.approx(150)
    assert snap.reported_response_kw(d.key, Direction.REDUCE) == pytest.approx(-150)  # the wrong way
    curtailed = build_resources([d], {d.id: {"active_power_w": 500_000.0, "curtailment_w": 100_000.0}})
    assert curtailed.reported_response_kw(d.key, Direction.REDUCE) == pytest.approx(100)
    assert curtailed.reported_response_kw(d.key, Direction.RAISE) is None  # no raise reported
    pinned = build_resources([d], {d.id: raised}, references={d.key: 640.0}).resources[d.key]
    assert isinstance(pinned, FlexibleLoad) and pinned.load_kw == 640  # a pinned reference wins
    bess = DeviceInfo(12, "b", "park", 1, "battery", "sunspec-battery", 5e5, 4, None, {})
    both = build_resources([d, bess], {d.id: raised, bess.id: {"active_power_w": 0.0, "soc_pct": 50}})
    assert both.reported_response_kw("b", Direction.RAISE) is None  # only flexible loads report one
