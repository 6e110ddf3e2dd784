"""MQTT topic names of contract v1: ``{root}/v1/{site}/{device}/{channel}``.

Site and device keys are slugs (``[a-z0-9][a-z0-9_.-]*``) so they never clash with MQTT wildcards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

VERSION = "v1"
KEY_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_KEY_RE = re.compile(KEY_PATTERN + r"\Z")
# The reserved device key addressing a whole site (e.g. a site-level charging limit).
SITE_TARGET = "_site"


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    CMD = "cmd"
    CMD_RESULT = "cmd/result"
    EVENT = "event"


def check_key(key: str, *, allow_site_target: bool = False) -> str:
    if allow_site_target and key == SITE_TARGET:
        return key
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid site/device key {key!r}: must match {KEY_PATTERN}")
    return key


def topic(site: str, device: str, channel: Channel, root: str = "lishui") -> str:
    """``device`` may be SITE_TARGET for commands addressed to a whole site."""
    return f"{root}/{VERSION}/{check_key(site)}/{check_key(device, allow_site_target=True)}/{channel.value}"


def subscription(channel: Channel, root: str = "lishui", site: str = "+", device: str = "+") -> str:
    """A filter for one channel of many devices (``+`` matches any site or device)."""
    return f"{root}/{VERSION}/{site}/{device}/{channel.value}"


def service_status(service: str, name: str, root: str = "lishui") -> str:
    """The retained status of a service instance (a gateway, an OCPP node), with its last-will.

    It lives under ``_sys`` and one level deeper than device topics, so no device filter
    (``{root}/v1/+/+/status``) ever matches it.
    """
    return f"{root}/{VERSION}/_sys/{check_key(service)}/{check_key(name)}/status"


def shared(group: str, topic_filter: str) -> str:
    """A shared subscription: the broker spreads messages over the group's members."""
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True, slots=True)
class TopicAddress:
    site: str
    device: str
    channel: Channel


def parse(topic_name: str, root: str = "lishui") -> TopicAddress:
    """Split a topic of the contract into site, device and channel; ValueError for anything else."""
    parts = topic_name.split("/")
    if len(parts) < 5 or parts[0] != root or parts[1] != VERSION:
        raise ValueError(f"not a {root}/{VERSION} topic: {topic_name!r}")
    try:
        channel = Channel("/".join(parts[4:]))
    except ValueError:
        raise ValueError(f"unknown channel in topic {topic_name!r}") from None
    return TopicAddress(check_key(parts[2]), check_key(parts[3], allow_site_target=True), channel)
