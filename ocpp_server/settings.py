"""OCPP server settings: the ``ocpp`` group of core.settings, with per-process overrides (CLI flags)."""

from __future__ import annotations

from typing import Any

from core.settings import OcppSettings, Settings

__all__ = ["OcppSettings", "ocpp_settings"]


def ocpp_settings(settings: Settings, **overrides: Any) -> OcppSettings:
    """``settings.ocpp`` with the non-None ``overrides`` applied (validated)."""
    data = settings.ocpp.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    return OcppSettings.model_validate(data)
