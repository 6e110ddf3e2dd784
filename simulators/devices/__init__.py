"""Simulated devices: physics + register image + test hooks (pause/resume, value, raw registers)."""

from simulators.devices.base import SimDevice
from simulators.devices.factory import build_device, build_devices

__all__ = ["SimDevice", "build_device", "build_devices"]
