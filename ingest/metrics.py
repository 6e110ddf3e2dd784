"""Prometheus metrics of the ingest service (process-wide, as prometheus_client wants them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS_WRITTEN = Counter("lishui_ingest_rows_written", "Telemetry rows inserted (redeliveries excluded)")
ROWS_DUPLICATE = Counter("lishui_ingest_rows_duplicate", "Telemetry rows already stored (redeliveries)")
BATCHES = Counter("lishui_ingest_batches", "Batches committed")
BATCH_ROWS = Histogram(
    "lishui_ingest_batch_rows",
    "Rows per committed batch",
    buckets=(1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000),
)
COMMIT_SECONDS = Histogram(
    "lishui_ingest_commit_seconds",
    "Time to write and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MESSAGES = Counter("lishui_ingest_messages", "MQTT messages received", ["channel"])
INVALID = Counter("lishui_ingest_invalid", "Messages or readings rejected, by reason", ["reason"])
PENDING_ROWS = Gauge("lishui_ingest_pending_rows", "Rows received but not yet committed")
WRITE_ERRORS = Counter("lishui_ingest_write_errors", "Failed batch writes (retried)")
STATUS_UPDATES = Counter("lishui_ingest_status_updates", "Device status messages applied")
ROLLUP_BUCKETS = Counter("lishui_ingest_rollup_buckets", "1-minute (bucket, device) pairs recomputed")
CHUNKS_DROPPED = Counter("lishui_ingest_chunks_dropped", "Chunks dropped by retention", ["table"])
FAST_PATH_FALLBACKS = Counter(
    "lishui_ingest_fast_path_fallbacks",
    "Batches whose direct COPY met an existing row (the same reading under another message identity)"
    " and were written again through the staging table",
)
LAG_SECONDS = Gauge(
    "lishui_ingest_lag_seconds",
    "Age of the oldest message received but neither committed nor spilled (0 when none)",
)
NEWEST_COMMITTED = Gauge(
    "lishui_ingest_newest_committed_timestamp_seconds",
    "Newest sample time committed (Unix time): now minus this is how far the database is behind",
)
SPILL_BYTES = Gauge("lishui_ingest_spill_bytes", "Bytes of the disk spill (held while the DB is away)")
SPILL_MESSAGES = Gauge("lishui_ingest_spill_messages", "Messages in the disk spill, waiting to be written")
SPILLED = Counter("lishui_ingest_spilled_messages", "Messages appended to the disk spill (and acknowledged)")
REPLAYED = Counter("lishui_ingest_replayed_messages", "Spilled messages written to the database")
