"""Modbus hardware simulators with physics (PV, storage, meters, small hydro, flexible loads) and scenarios.

Entry points: ``serve_fleet`` / ``serve_devices`` (simulators.fleet), ``load_scenario`` (simulators.scenario),
``SimClock`` (simulators.clock).
"""

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.fleet import (
    Endpoint,
    Fleet,
    endpoint_lines,
    generate_devices,
    generate_pv_inverters,
    serve_devices,
    serve_fleet,
)
from simulators.scenario import Scenario, load_scenario, peak_shaving_capacity_w

__all__ = [
    "Endpoint",
    "Fleet",
    "Scenario",
    "SimClock",
    "SimDevice",
    "endpoint_lines",
    "generate_devices",
    "generate_pv_inverters",
    "load_scenario",
    "peak_shaving_capacity_w",
    "serve_devices",
    "serve_fleet",
]
