"""Shared by the SunSpec devices: the image at 40000 and the common model (1)."""

from __future__ import annotations

from typing import ClassVar

from simulators.clock import SimClock
from simulators.devices.base import SimDevice
from simulators.sunspec_image import SunSpecImage

SUNSPEC_BASE = 40000
FIRMWARE = "lishui-sim 0.1"


class SunSpecDevice(SimDevice):
    # metric -> (model, point) whose register carries it
    POINT_OF_METRIC: ClassVar[dict[str, tuple[int, str]]] = {}

    def __init__(
        self,
        key: str,
        clock: SimClock,
        unit_id: int,
        vendor: str | None,
        model_name: str | None,
    ) -> None:
        super().__init__(key, clock, unit_id)
        self.sunspec = SunSpecImage(self.registers, SUNSPEC_BASE)
        ss = self.sunspec
        ss.add_model(1)
        ss.set_raw(1, "Mn", vendor or "Lishui Sim")
        ss.set_raw(1, "Md", model_name or type(self).__name__)
        ss.set_raw(1, "Opt", "")
        ss.set_raw(1, "Vr", FIRMWARE)
        ss.set_raw(1, "SN", key)
        ss.set_raw(1, "DA", unit_id)
        ss.writable(1, "DA", 1, 247)

    def resolutions(self) -> dict[str, float]:
        return {m: self.sunspec.step(mid, point) for m, (mid, point) in self.POINT_OF_METRIC.items()}
