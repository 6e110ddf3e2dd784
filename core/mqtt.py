"""MQTT client construction from settings, so every service connects the same way."""

from __future__ import annotations

import aiomqtt

from core.settings import MqttSettings


def client(
    settings: MqttSettings,
    identifier: str,
    *,
    will: aiomqtt.Will | None = None,
    persistent: bool = False,
    max_queued_outgoing: int | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client (MQTT 3.1.1). ``persistent`` keeps the session (and QoS 1 messages queued for
    it) on the broker across reconnects, which needs a stable ``identifier``."""
    return aiomqtt.Client(
        hostname=settings.host,
        port=settings.port,
        username=settings.username,
        password=settings.password,
        identifier=identifier,
        clean_session=not persistent,
        keepalive=settings.keepalive_s,
        will=will,
        max_queued_outgoing_messages=max_queued_outgoing,
    )
