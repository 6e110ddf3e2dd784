"""Which devices a gateway process carries: a YAML file of DeviceConfig entries."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.topics import KEY_PATTERN
from gateway.errors import ProfileError


class DeviceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = Field(pattern=f"^{KEY_PATTERN}$")
    site: str = Field(pattern=f"^{KEY_PATTERN}$")
    profile: str  # a shipped profile name, or a path to a profile YAML file
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    poll_interval_s: float | None = Field(None, gt=0)  # none = the profile's


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=f"^{KEY_PATTERN}$")
    devices: list[DeviceConfig]

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        seen: set[tuple[str, str]] = set()
        for device in self.devices:
            if (device.site, device.key) in seen:
                raise ValueError(f"device {device.site}/{device.key} listed twice")
            seen.add((device.site, device.key))
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> GatewayConfig:
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as err:
            raise ProfileError(f"{path}: {err}") from err
