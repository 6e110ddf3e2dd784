"""Prometheus metrics of the demand-response controller (no per-device labels: see gateway.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEADER = Gauge("lishui_dr_leader", "1 while this controller holds the leader lock")
TAKEOVERS = Counter("lishui_dr_takeovers", "Times this controller became the leader")
CYCLES = Counter("lishui_dr_cycles", "Control cycles run")
CYCLE_ERRORS = Counter("lishui_dr_cycle_errors", "Control cycles that failed (retried next cycle)")
CYCLE_SECONDS = Histogram(
    "lishui_dr_cycle_seconds",
    "Wall time of one control cycle (read, decide, write)",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
ACTIVE_EVENTS = Gauge("lishui_dr_active_events", "Events being controlled")
TARGET_KW = Gauge("lishui_dr_target_kw", "Sum of the active events' targets")
DELIVERED_KW = Gauge("lishui_dr_delivered_kw", "Sum of the active events' measured delivered response")
COMMANDS = Counter("lishui_dr_commands", "Commands sent", ["kind"])  # dispatch | restore
RESULTS = Counter("lishui_dr_command_results", "Command results received", ["status"])
