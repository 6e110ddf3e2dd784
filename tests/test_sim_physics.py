"""Physics of the simulated devices: fast, no network, frozen or explicit time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.clock import SimClock
from simulators.physics.battery import BatteryParams, BatteryPhysics
from simulators.physics.flexload import FlexLoadParams, FlexLoadPhysics
from simulators.physics.hydro import HydroParams, HydroPhysics
from simulators.physics.meter import MeterParams, MeterPhysics
from simulators.physics.pv import PvParams, PvPhysics
from simulators.physics.solar import clear_sky_poa

MIDSUMMER = datetime(2025, 6, 21, tzinfo=UTC)
LOCAL_NOON = MIDSUMMER + timedelta(hours=4, minutes=30)  # 12:30 CST, close to solar noon at 111.7° E
LOCAL_MIDNIGHT = MIDSUMMER - timedelta(hours=8)


def test_clock_runs_accelerated_and_frozen() -> None:
    clock = SimClock(factor=0, start=MIDSUMMER)
    assert clock.now() == MIDSUMMER
    clock.advance(90)
    assert clock.now() == MIDSUMMER + timedelta(seconds=90)
    fast = SimClock(factor=3600, start=MIDSUMMER)
    assert fast.now() >= MIDSUMMER and fast.now().tzinfo is not None
    with pytest.raises(ValueError):
        SimClock(start=datetime(2025, 1, 1))  # naive


def test_clear_sky_is_zero_at_night_and_peaks_near_noon() -> None:
    assert clear_sky_poa(LOCAL_MIDNIGHT, 29.6, 111.7) == 0.0
    noon = clear_sky_poa(LOCAL_NOON, 29.6, 111.7)
    assert 800 < noon < 1100
    assert clear_sky_poa(LOCAL_NOON - timedelta(hours=4), 29.6, 111.7) < noon


def _pv(rated: float = 100_000.0, seed: int = 1) -> PvPhysics:
    return PvPhysics(PvParams(rated_w=rated, seed=seed, cloud_mean=1.0, cloud_sigma=0.0))


def test_pv_zero_at_night_and_energy_counts_up() -> None:
    pv = _pv()
    pv.step(LOCAL_MIDNIGHT, 0)
    assert pv.power_w == 0.0
    t = LOCAL_MIDNIGHT
    for _ in range(24):
        t += timedelta(hours=1)
        pv.step(t, 3600)
    # A clear midsummer day: a 100 kW system makes several hundred kWh.
    assert 300_000 < pv.energy_wh < 1_000_000


@settings(max_examples=60, deadline=None)
@given(
    rated=st.floats(1_000, 5_000_000),
    minutes=st.integers(0, 24 * 60),
    limit=st.floats(0, 100),
    enabled=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pv_never_exceeds_rating_or_limit(
    rated: float, minutes: int, limit: float, enabled: bool, seed: int
) -> None:
    pv = PvPhysics(PvParams(rated_w=rated, seed=seed, dc_ac_ratio=1.5, derate=1.0))
    pv.limit_pct, pv.limit_enabled = limit, enabled
    t = MIDSUMMER + timedelta(minutes=minutes)
    pv.step(t, 0)
    pv.step(t + timedelta(minutes=5), 300)
    assert 0.0 <= pv.power_w <= rated + 1e-6
    if enabled:
        assert pv.power_w <= rated * limit / 100 + 1e-6


def test_pv_limit_throttles_at_noon() -> None:
    pv = _pv()
    pv.step(LOCAL_NOON, 0)
    free = pv.power_w
    assert free > 70_000
    pv.limit_pct, pv.limit_enabled = 30.0, True
    pv.step(LOCAL_NOON + timedelta(seconds=1), 1)
    assert pv.power_w == pytest.approx(30_000)
    assert pv.throttled


def _battery(**kw: float | bool) -> BatteryPhysics:
    params = {
        "capacity_wh": 100_000.0,
        "max_charge_w": 50_000.0,
        "max_discharge_w": 50_000.0,
        "round_trip_efficiency": 0.81,
        "initial_soc_pct": 50.0,
        "local_schedule": False,
        **kw,
    }
    return BatteryPhysics(BatteryParams(**params))  # type: ignore[arg-type]


def test_battery_soc_integrates_power_with_losses() -> None:
    bat = _battery()
    bat.control.discharge_enabled, bat.control.out_pct = True, 50.0  # 25 kW discharge
    bat.step(MIDSUMMER, 3600)
    assert bat.power_w == pytest.approx(25_000)
    # 25 kWh delivered drains 25 / 0.9 kWh at 90 % one-way efficiency: 27.8 % of 100 kWh.
    assert bat.soc_pct == pytest.approx(50 - 25 / 0.9, abs=0.01)
    bat.control.out_pct = -50.0  # negative discharge rate = charge
    bat.step(MIDSUMMER, 3600)
    assert bat.power_w == pytest.approx(-25_000)
    assert bat.soc_pct == pytest.approx(50 - 25 / 0.9 + 25 * 0.9, abs=0.01)
    assert bat.energy_export_wh == pytest.approx(25_000) and bat.energy_import_wh == pytest.approx(25_000)


def test_battery_charge_bit_uses_inwrte_and_respects_wchamax() -> None:
    bat = _battery()
    bat.control.charge_enabled, bat.control.in_pct, bat.control.wcha_max_w = True, 100.0, 20_000.0
    bat.step(MIDSUMMER, 60)
    assert bat.power_w == pytest.approx(-20_000)
    assert bat.charge_status == 4


def test_battery_stops_at_soc_bounds() -> None:
    bat = _battery(soc_min_pct=10.0, soc_max_pct=90.0)
    bat.control.discharge_enabled, bat.control.out_pct = True, 100.0
    for _ in range(20):
        bat.step(MIDSUMMER, 600)
    assert bat.soc_pct == pytest.approx(10.0, abs=1e-6)
    assert bat.power_w == 0.0 and bat.charge_status == 2
    bat.control.out_pct = -100.0
    for _ in range(30):
        bat.step(MIDSUMMER, 600)
    assert bat.soc_pct == pytest.approx(90.0, abs=1e-6)
    assert bat.power_w == 0.0 and bat.charge_status == 5
    bat.control.reserve_max_pct = 80.0  # a tighter band from SocRsvMax: no more charging above it
    bat.step(MIDSUMMER, 60)
    assert bat.power_w == 0.0


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(-100, 100), st.floats(0.5, 4000)), min_size=1, max_size=15),
    soc=st.floats(0, 100),
)
def test_battery_soc_stays_in_band(steps: list[tuple[float, float]], soc: float) -> None:
    bat = _battery(initial_soc_pct=soc, soc_min_pct=5.0, soc_max_pct=95.0)
    bat.control.discharge_enabled = True
    for pct, dt in steps:
        bat.control.out_pct = pct
        bat.step(MIDSUMMER, dt)
        assert 5.0 - 1e-6 <= bat.soc_pct <= 95.0 + 1e-6
        assert -50_000 - 1e-6 <= bat.power_w <= 50_000 + 1e-6


def test_hydro_follows_setpoint_within_ramp() -> None:
    hydro = HydroPhysics(
        HydroParams(rated_w=2_000_000, typical_output_w=800_000, ramp_kw_per_min=100, inflow_sigma=0.0)
    )
    assert hydro.power_w == pytest.approx(800_000)
    hydro.setpoint_w = 1_800_000
    hydro.step(MIDSUMMER, 60)
    assert hydro.power_w == pytest.approx(900_000)  # +100 kW in one minute
    hydro.step(MIDSUMMER, 600)
    assert hydro.power_w == pytest.approx(1_800_000)
    assert 0 < hydro.gate_pct <= 100
    hydro.setpoint_w = 0
    hydro.step(MIDSUMMER, 3 * 3600)
    assert hydro.power_w == 0 and hydro.state == 0


def test_hydro_drains_the_reservoir_and_trips_at_minimum_level() -> None:
    hydro = HydroPhysics(
        HydroParams(
            rated_w=2_000_000,
            reservoir_area_m2=5_000,
            initial_level_m=2.0,
            typical_output_w=2_000_000,
            mean_inflow_m3s=0.5,
            inflow_sigma=0.0,
        )
    )
    assert hydro.flow_m3s > hydro.inflow_m3s
    level0 = hydro.level_m
    hydro.step(MIDSUMMER, 60)
    assert hydro.level_m < level0
    hydro.step(MIDSUMMER, 3600)
    assert hydro.power_w == 0.0 and not hydro.running
    assert hydro.level_m >= hydro.p.min_level_m - 0.05
    # Inflow refills it above the restart margin, and the unit ramps back up.
    hydro.step(MIDSUMMER, 3 * 3600)
    assert hydro.running and hydro.power_w > 0


@settings(max_examples=40, deadline=None)
@given(setpoint=st.floats(0, 3_000_000), dt=st.floats(0, 7200), level=st.floats(0, 6))
def test_hydro_power_bounded_by_rating_and_water(setpoint: float, dt: float, level: float) -> None:
    hydro = HydroPhysics(HydroParams(rated_w=3_000_000, initial_level_m=level, inflow_sigma=0.0))
    hydro.setpoint_w = setpoint
    hydro.step(MIDSUMMER, dt)
    assert 0.0 <= hydro.power_w <= min(3_000_000.0, hydro.water_limit_w) + 1e-6
    assert hydro.level_m <= hydro.p.max_level_m


def test_flexload_curtailment_down_to_floor() -> None:
    load = FlexLoadPhysics(
        FlexLoadParams(rated_w=1_000_000, shape="flat", floor_w=700_000, max_curtailable_w=400_000, noise=0.0)
    )
    load.step(LOCAL_NOON, 0)
    assert load.power_w == pytest.approx(1_000_000) and load.state == 1
    load.setpoint_w = 200_000
    load.step(LOCAL_NOON, 1)
    assert load.power_w == pytest.approx(800_000)
    assert load.curtailment_w == pytest.approx(200_000) and load.state == 2
    load.setpoint_w = 400_000  # more than the floor allows: stops at the floor
    load.step(LOCAL_NOON, 1)
    assert load.power_w == pytest.approx(700_000)
    assert load.curtailment_w == pytest.approx(300_000)


def test_flexload_raise_up_to_its_maximum_and_the_ceiling_then_back() -> None:
    load = FlexLoadPhysics(
        FlexLoadParams(rated_w=1_000_000, shape="flat", max_raisable_w=300_000, max_load_w=1_200_000, noise=0)
    )
    load.raise_setpoint_w = 150_000
    load.step(LOCAL_NOON, 0)
    assert load.power_w == pytest.approx(1_150_000)
    assert load.raise_w == pytest.approx(150_000) and load.curtailment_w == 0 and load.state == 3
    load.raise_setpoint_w = 1_000_000  # beyond the maximum raisable, and the ceiling stops it first
    load.step(LOCAL_NOON, 1)
    assert load.power_w == pytest.approx(1_200_000) and load.raise_w == pytest.approx(200_000)
    load.setpoint_w = 100_000  # curtailment and raise together: the net effect
    load.step(LOCAL_NOON, 1)
    assert load.power_w == pytest.approx(1_200_000)
    load.raise_setpoint_w = 0
    load.step(LOCAL_NOON, 1)
    assert load.power_w == pytest.approx(900_000) and load.raise_w == 0 and load.state == 2
    load.setpoint_w = 0
    load.step(LOCAL_NOON, 1)
    assert load.power_w == pytest.approx(1_000_000) and load.state == 1


def test_flexload_raise_defaults_scale_with_rating() -> None:
    params = FlexLoadParams(rated_w=800_000, shape="two_shift", noise=0)
    assert params.max_raisable == pytest.approx(240_000) and params.ceiling == 800_000
    load = FlexLoadPhysics(params)
    load.raise_setpoint_w = 10_000_000
    load.step(LOCAL_MIDNIGHT + timedelta(hours=3), 0)  # night base load 30 %: room for the full raise
    assert load.power_w == pytest.approx(0.30 * 800_000 + 240_000)


def test_flexload_profile_has_shifts_and_night_base() -> None:
    load = FlexLoadPhysics(FlexLoadParams(rated_w=1_000_000, shape="two_shift", noise=0.0))
    load.step(LOCAL_MIDNIGHT + timedelta(hours=3), 0)  # 03:00 local
    night = load.power_w
    load.step(LOCAL_MIDNIGHT + timedelta(hours=10), 7 * 3600)  # 10:00
    day = load.power_w
    load.step(LOCAL_MIDNIGHT + timedelta(hours=12, minutes=30), 9000)  # lunch
    lunch = load.power_w
    assert night < lunch < day
    assert load.energy_wh > 0


def test_meter_import_export_counters() -> None:
    meter = MeterPhysics(MeterParams(peak_load_w=100_000, shape="flat", noise=0.0))
    meter.step(LOCAL_NOON, 0, external_w=0.0)
    meter.step(LOCAL_NOON + timedelta(hours=1), 3600, external_w=0.0)
    assert meter.power_w == pytest.approx(100_000)
    assert meter.energy_import_wh == pytest.approx(100_000, rel=1e-6)
    meter.step(LOCAL_NOON + timedelta(hours=2), 3600, external_w=-300_000.0)  # PV export at the site
    assert meter.power_w == pytest.approx(-200_000)
    assert meter.energy_export_wh > 0
    assert 45 < meter.frequency_hz < 55
    assert all(200 < v < 260 for v in meter.phase_voltages_v)
    assert sum(meter.phase_powers_w) == pytest.approx(meter.power_w)
