"""Prometheus metrics of the OCPP server (``lishui_ocpp_*``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("lishui_ocpp_connections", "Piles connected to this node", ["version"])
HANDSHAKES = Counter("lishui_ocpp_handshakes_total", "Websocket handshakes by outcome", ["outcome"])
CALLS_RECEIVED = Counter(
    "lishui_ocpp_calls_received_total",
    "CALLs from piles by action and outcome",
    ["version", "action", "outcome"],
)
CALL_SECONDS = Histogram(
    "lishui_ocpp_call_seconds",
    "Time to answer a pile's CALL",
    ["version"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CALLS_SENT = Counter(
    "lishui_ocpp_calls_sent_total", "CALLs to piles by action and outcome", ["version", "action", "outcome"]
)
CALL_SENT_SECONDS = Histogram("lishui_ocpp_call_sent_seconds", "Round trip of a CALL to a pile", ["version"])
FRAMES_REJECTED = Counter(
    "lishui_ocpp_frames_rejected_total", "Frames that were not valid OCPP-J", ["version", "reason"]
)
VIOLATIONS = Counter("lishui_ocpp_violations_total", "Lifecycle violations recorded", ["kind"])
COMMANDS = Counter("lishui_ocpp_commands_total", "Operator commands by op and status", ["op", "status"])
TRANSACTIONS = Counter("lishui_ocpp_transactions_total", "Transactions started/ended", ["event"])
PUBLISH_QUEUE = Gauge("lishui_ocpp_publish_queue", "MQTT messages waiting to be published")

_received: dict[tuple[str, str, str], Any] = {}
_seconds: dict[str, Any] = {}


def call_received(version: str, action: str, outcome: str, seconds: float) -> None:
    """CALLS_RECEIVED and CALL_SECONDS, with the labelled children looked up once (hot path)."""
    key = (version, action, outcome)
    counter = _received.get(key)
    if counter is None:
        counter = _received[key] = CALLS_RECEIVED.labels(version, action, outcome)
    counter.inc()
    hist = _seconds.get(version)
    if hist is None:
        hist = _seconds[version] = CALL_SECONDS.labels(version)
    hist.observe(seconds)
