"""Builds simulated devices from scenario entries: physics parameters, defaults scaled to the rating."""

from __future__ import annotations

from collections.abc import Iterable

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.devices.battery import BatteryDevice
from simulators.devices.flexload import FlexLoadDevice
from simulators.devices.hydro import HydroDevice
from simulators.devices.meter import MeterDevice
from simulators.devices.pv_inverter import PvInverterDevice
from simulators.physics.battery import BatteryParams
from simulators.physics.flexload import FlexLoadParams
from simulators.physics.hydro import HydroParams
from simulators.physics.meter import MeterParams
from simulators.physics.pv import PvParams
from simulators.physics.randomness import stable_seed
from simulators.scenario import MODBUS_KINDS, BatterySim, Device, HydroSim, LoadSim, MeterSim, PvSim, Site

LV_PHASE_V = 230.0
MV_10KV_PHASE_V = 10_000 / 3**0.5  # large loads and transformer meters are metered on the 10 kV side
GEN_6KV_PHASE_V = 6_300 / 3**0.5  # hydro generators above 1 MW run at 6.3 kV


def _nominal_v(explicit: float | None, rated_w: float, mv_phase_v: float) -> float:
    if explicit is not None:
        return explicit
    return mv_phase_v if rated_w > 1_000_000 else LV_PHASE_V


def build_device(spec: Device, site: Site | None, clock: SimClock) -> SimDevice:
    """One simulated device; ``site`` gives the PV's location (default: central Lixian)."""
    sim = spec.sim_params()
    rated = spec.rated_power_w
    lat, lon = (site.latitude, site.longitude) if site is not None else (29.63, 111.76)
    seed = stable_seed(spec.key)
    common = {"unit_id": spec.unit_id}
    if isinstance(sim, PvSim):
        pv = PvParams(
            rated_w=rated,
            latitude=lat,
            longitude=lon,
            tilt_deg=sim.tilt_deg,
            azimuth_deg=sim.azimuth_deg,
            dc_ac_ratio=sim.dc_ac_ratio,
            derate=sim.derate,
            cloud_mean=sim.cloud_mean,
            cloud_sigma=sim.cloud_sigma,
            cloud_tau_s=sim.cloud_tau_s,
            nominal_dc_v=sim.nominal_dc_v,
            seed=sim.seed if sim.seed is not None else seed,
            energy_wh=sim.energy_wh,
        )
        return PvInverterDevice(
            spec.key,
            clock,
            pv,
            vendor=spec.vendor,
            model_name=spec.model,
            nominal_v=sim.nominal_v or LV_PHASE_V,
            **common,
        )
    if isinstance(sim, BatterySim):
        bat = BatteryParams(
            capacity_wh=sim.capacity_wh or 2.0 * rated,
            max_charge_w=sim.max_charge_w or rated,
            max_discharge_w=sim.max_discharge_w or rated,
            round_trip_efficiency=sim.round_trip_efficiency,
            soc_min_pct=sim.soc_min_pct,
            soc_max_pct=sim.soc_max_pct,
            initial_soc_pct=sim.initial_soc_pct,
            soh_pct=sim.soh_pct,
            nominal_dc_v=sim.nominal_dc_v,
            local_schedule=sim.local_schedule,
            seed=sim.seed if sim.seed is not None else seed,
        )
        return BatteryDevice(
            spec.key, clock, bat, rated_w=rated, vendor=spec.vendor, model_name=spec.model, **common
        )
    if isinstance(sim, MeterSim):
        meter = MeterParams(
            peak_load_w=sim.peak_load_w if sim.peak_load_w is not None else rated,
            shape=sim.shape,
            power_factor=sim.power_factor,
            nominal_v=_nominal_v(sim.nominal_v, rated, MV_10KV_PHASE_V),
            seed=sim.seed if sim.seed is not None else seed,
            energy_import_wh=sim.energy_import_wh,
            energy_export_wh=sim.energy_export_wh,
        )
        return MeterDevice(
            spec.key, clock, meter, rated_w=rated, vendor=spec.vendor, model_name=spec.model, **common
        )
    if isinstance(sim, HydroSim):
        hydro = HydroParams(
            rated_w=rated,
            head_m=sim.head_m,
            efficiency=sim.efficiency,
            reservoir_area_m2=sim.reservoir_area_m2,
            min_level_m=sim.min_level_m,
            max_level_m=sim.max_level_m,
            initial_level_m=sim.initial_level_m,
            mean_inflow_m3s=sim.mean_inflow_m3s,
            inflow_sigma=sim.inflow_sigma,
            typical_output_w=sim.typical_output_w,
            ramp_kw_per_min=sim.ramp_kw_per_min,
            seed=sim.seed if sim.seed is not None else seed,
            energy_wh=sim.energy_wh,
        )
        return HydroDevice(
            spec.key, clock, hydro, nominal_v=_nominal_v(sim.nominal_v, rated, GEN_6KV_PHASE_V), **common
        )
    if isinstance(sim, LoadSim):
        load = FlexLoadParams(
            rated_w=rated,
            shape=sim.shape,
            floor_w=sim.floor_w,
            max_curtailable_w=sim.max_curtailable_w,
            max_raisable_w=sim.max_raisable_w,
            max_load_w=sim.max_load_w,
            power_factor=sim.power_factor,
            nominal_v=_nominal_v(sim.nominal_v, rated, MV_10KV_PHASE_V),
            noise=sim.noise,
            seed=sim.seed if sim.seed is not None else seed,
            energy_wh=sim.energy_wh,
        )
        return FlexLoadDevice(spec.key, clock, load, nominal_v=load.nominal_v, **common)
    raise ValueError(f"device {spec.key}: kind {spec.kind!r} is not a simulated Modbus device")


def build_devices(specs: Iterable[Device], sites: Iterable[Site], clock: SimClock) -> dict[str, SimDevice]:
    """The Modbus devices of ``specs`` (charge points etc. are skipped), meters wired to their site."""
    by_site = {s.key: s for s in sites}
    specs = [s for s in specs if s.kind in MODBUS_KINDS]
    devices = {s.key: build_device(s, by_site.get(s.site), clock) for s in specs}
    for spec in specs:
        device = devices[spec.key]
        if isinstance(device, MeterDevice) and spec.sim_params().aggregate_site:
            device.downstream = [
                devices[o.key]
                for o in specs
                if o.site == spec.site and o.kind != "meter" and o.key != spec.key
            ]
    return devices
