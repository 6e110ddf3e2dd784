"""Prometheus metrics of the gateway (the lead's CLI serves the endpoint). No per-device labels:
500 devices x several series would swamp the server; per-device state is on MQTT status topics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POLLS = Counter("lishui_gateway_polls", "Completed device polls")
POLL_ERRORS = Counter("lishui_gateway_poll_errors", "Failed device polls", ["kind"])  # offline | fault
LATE_POLLS = Counter(
    "lishui_gateway_late_polls", "Polls started late or skipped because the previous ran over"
)
POLL_LATENCY = Histogram(
    "lishui_gateway_poll_latency_seconds",
    "Time from the start of a poll to its decoded values",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
PUBLISH_QUEUE_DEPTH = Gauge("lishui_gateway_publish_queue_depth", "MQTT messages waiting to be published")
PUBLISH_DROPPED = Counter("lishui_gateway_publish_dropped", "MQTT messages dropped from a full queue")
COMMANDS = Counter("lishui_gateway_commands", "Commands answered", ["status"])
DEVICES = Gauge("lishui_gateway_devices", "Devices by state", ["state"])
SPOOL_BYTES = Gauge("lishui_gateway_spool_bytes", "Bytes of the gateway's disk spool")
SPOOL_DROPPED = Counter(
    "lishui_gateway_spool_dropped", "Unpublished records LOST because the spool reached its size limit"
)
SPOOL_TRUNCATED = Counter(
    "lishui_gateway_spool_truncated", "Spool segments cut at a torn or corrupt record during recovery"
)
