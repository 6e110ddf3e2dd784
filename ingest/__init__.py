"""Ingest: MQTT telemetry and status -> TimescaleDB, exactly once per reading (see ingest.service)."""
