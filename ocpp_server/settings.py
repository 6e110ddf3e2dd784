"""OCPP server settings. Until core/settings.py grows an ``ocpp`` group, built from defaults (and from
``Settings.ocpp`` when that group exists)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from core.settings import Settings


class OcppSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    # wss:// when both are set (security profile 2); ws:// otherwise (security profile 1).
    tls_cert: str | None = None
    tls_key: str | None = None
    # BootNotification interval (heartbeat) for accepted piles, and the retry interval for pending ones.
    heartbeat_interval_s: int = Field(300, ge=1)
    pending_retry_s: int = Field(60, ge=1)
    # How long the server waits for a pile's answer to a call.
    call_timeout_s: float = Field(30.0, gt=0)
    # Websocket ping interval/timeout (dead-peer detection); 0 disables pings.
    ping_interval_s: float = Field(60.0, ge=0)
    ping_timeout_s: float = Field(30.0, gt=0)
    # A pile with no password set may connect without Basic auth (never in production).
    allow_no_password: bool = False
    # Name of this server node (in Status.source, service status topic, MQTT client id).
    node: str | None = None
    # Shared-subscription group of the site-level commands (one node of the group gets each).
    share_group: str = "ocpp"
    # How often the server re-sends site-limit profiles before they run out (renewal margin).
    max_message_bytes: int = Field(1 << 20, ge=1024)
    reuse_port: bool = False


def ocpp_settings(settings: Settings, **overrides: Any) -> OcppSettings:
    """OcppSettings from ``settings.ocpp`` when core grows that group, else defaults; ``overrides`` win."""
    base = getattr(settings, "ocpp", None)
    data: dict[str, Any] = base.model_dump() if isinstance(base, BaseModel) else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return OcppSettings.model_validate(data)
