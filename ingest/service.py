"""The ingest service: MQTT telemetry and status -> TimescaleDB.

Flow::

    paho thread ─► MqttSource buffer ─► collector (validate, batch) ─► queue ─► writer (one txn) ─► ack
                                                                  maintenance: rollups, retention

- Telemetry comes from the shared subscription ``$share/{group}/{root}/v1/+/+/telemetry`` (QoS 1), so
  ingest scales by adding processes. Status comes from a plain subscription: shared subscriptions never
  deliver retained messages, and the retained status is the point of that channel; every instance
  applies it, guarded by ``status_at`` so that is idempotent.
- A message is acknowledged only after the transaction holding its rows committed (invalid messages
  too, in receipt order). A crash loses nothing: the broker redelivers, the primary key ignores what
  was already stored. Exactly once per reading, at least once per message.
- Back-pressure: a slow or unreachable database stops acknowledgements, the broker stops sending after
  the Receive Maximum window, and the backlog waits in the broker's persistent session. Memory is bounded
  by that window plus ``max_queued_batches`` batches; a failing write is retried with backoff, forever,
  and logged — nothing is dropped.
- Invalid input (topic, payload, unknown metric, implausible timestamp, device under another site) is
  counted by reason in ``lishui_ingest_invalid_total``, logged at most once per reason every 10 s, and
  skipped; the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from core.metrics import BY_NAME
from core.payloads import PayloadError, Status, TelemetryBatch, decode
from core.registry import DeviceResolver
from core.settings import Settings
from core.topics import SITE_TARGET, Channel, parse, shared, subscription
from ingest import maintenance
from ingest import metrics as m
from ingest.source import Inbound, MqttSource
from ingest.writer import Batch, Reading, TelemetryWriter, WriteResult

log = logging.getLogger(__name__)

# Readings further in the future than this are a device clock problem, not data.
MAX_FUTURE = timedelta(days=1)
RETENTION_EVERY_S = 3600.0


class RateLimitedLog:
    """At most one warning per reason every ``interval_s``; the suppressed count goes with the next one."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._state: dict[str, tuple[float, int]] = {}

    def warning(self, reason: str, msg: str, **extra: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._state.get(reason, (-1e18, 0))
        if now - last >= self._interval_s:
            self._log.warning(msg, extra={"reason": reason, "suppressed": suppressed, **extra})
            self._state[reason] = (now, 0)
        else:
            self._state[reason] = (last, suppressed + 1)


def default_client_id(settings: Settings) -> str:
    """Stable per host and topic root. Several ingest processes on one host need distinct ids
    (``client_id=``): the broker keeps each id's session, and its share of the messages, until it returns."""
    configured = settings.ingest.client_id
    if configured:
        return str(configured)
    return f"lishui-ingest-{settings.topic_root}-{settings.ingest.share_group}-{socket.gethostname()}"


class IngestService:
    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 65535,
        max_queued_batches: int = 4,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        root = settings.topic_root
        self._source = MqttSource(
            settings.mqtt,
            client_id or default_client_id(settings),
            {
                shared(settings.ingest.share_group, subscription(Channel.TELEMETRY, root)): 1,
                subscription(Channel.STATUS, root): 1,
            },
            receive_maximum=receive_maximum,
            session_expiry_s=session_expiry_s,
        )
        self.resolver = DeviceResolver()
        self._writer = TelemetryWriter(settings.db.dsn, self.resolver)
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=max_queued_batches)
        self._current = Batch()
        self._inflight: Batch | None = None
        self._drain_timeout_s = drain_timeout_s
        self._bad = RateLimitedLog(log)

    @property
    def ready(self) -> asyncio.Event:
        """Set once connected and subscribed (cleared while the broker is away)."""
        return self._source.ready

    # -- lifecycle ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; on the way out the batches in hand are written (for at most
        ``drain_timeout_s``) and acknowledged; anything unwritten is redelivered by the broker later."""
        self._source.start()
        log.info(
            "ingest started", extra={"client_id": self._source.client_id, "root": self.settings.topic_root}
        )
        tasks = [
            asyncio.create_task(self._collect(), name="ingest-collect"),
            asyncio.create_task(self._write_loop(), name="ingest-write"),
            asyncio.create_task(self._maintain(), name="ingest-maintain"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self._drain()
            finally:
                await self._source.stop()
                await self._writer.close()
                m.PENDING_ROWS.set(0)
                log.info("ingest stopped")

    async def _drain(self) -> None:
        batch = Batch()
        if self._inflight is not None:
            batch.merge(self._inflight)
        while not self._queue.empty():
            batch.merge(self._queue.get_nowait())
        batch.merge(self._current)
        self._inflight, self._current = None, Batch()
        if batch and await self._write_with_retry(batch, deadline=time.monotonic() + self._drain_timeout_s):
            self._source.ack(batch.acks)
        elif batch:
            log.warning("shutdown: batch left for redelivery", extra={"rows": batch.rows})

    # -- collecting ---------------------------------------------------------------------------------

    def _pending_rows(self) -> int:
        queued = sum(b.rows for b in self._queue._queue)  # type: ignore[attr-defined]
        return self._current.rows + queued + (self._inflight.rows if self._inflight else 0)

    async def _collect(self) -> None:
        cfg = self.settings.ingest
        while True:
            timeout = None
            if self._current:
                timeout = max(0.0, self._current.started + cfg.batch_max_delay_s - time.monotonic())
            for item in await self._source.get_many(4096, timeout):
                if not self._current:
                    self._current.started = time.monotonic()
                self._accept(item)
                if self._current.rows >= cfg.batch_max_rows:
                    await self._hand_over()
            if self._current and time.monotonic() >= self._current.started + cfg.batch_max_delay_s:
                await self._hand_over()
            m.PENDING_ROWS.set(self._pending_rows())

    async def _hand_over(self) -> None:
        batch, self._current = self._current, Batch()
        await self._queue.put(batch)

    def _invalid(self, reason: str, detail: str, topic: str, n: int = 1) -> None:
        m.INVALID.labels(reason=reason).inc(n)
        self._bad.warning(reason, "invalid input skipped", detail=detail, topic=topic, count=n)

    def _accept(self, item: Inbound) -> None:
        self._current.acks.append((item.generation, item.mid, item.qos))
        try:
            address = parse(item.topic, self.settings.topic_root)
        except ValueError as err:
            self._invalid("bad_topic", str(err), item.topic)
            return
        if address.device == SITE_TARGET:
            self._invalid("bad_topic", "the site target takes commands, not telemetry or status", item.topic)
            return
        pair = (address.site, address.device)
        if address.channel is Channel.TELEMETRY:
            m.MESSAGES.labels(channel="telemetry").inc()
            try:
                batch = decode(TelemetryBatch, item.payload)
            except PayloadError as err:
                self._invalid("bad_payload", err.reason, item.topic)
                return
            readings = self._readings(batch, item.topic)
            if readings:
                self._current.add_readings(pair, readings)
        elif address.channel is Channel.STATUS:
            m.MESSAGES.labels(channel="status").inc()
            if not item.payload:  # a retained status being cleared
                return
            try:
                status = decode(Status, item.payload)
            except PayloadError as err:
                self._invalid("bad_status", err.reason, item.topic)
                return
            self._current.add_status(pair, status)
        else:
            self._invalid("bad_topic", f"unexpected channel {address.channel}", item.topic)

    def _readings(self, batch: TelemetryBatch, topic: str) -> list[Reading]:
        now = datetime.now(UTC)
        newest = now + MAX_FUTURE
        oldest = now - timedelta(days=self.settings.db.retention_days)
        readings: list[Reading] = []
        unknown: set[str] = set()
        n_unknown = n_range = 0
        for sample in batch.samples:
            ts = sample.ts
            if not oldest <= ts <= newest:
                n_range += len(sample.values)
                continue
            for name, value in sample.values.items():
                metric = BY_NAME.get(name)
                if metric is None:
                    unknown.add(name)
                    n_unknown += 1
                else:
                    readings.append((ts, metric.id, value))
        if n_unknown:
            self._invalid("unknown_metric", f"not in the catalogue: {sorted(unknown)}", topic, n_unknown)
        if n_range:
            self._invalid(
                "ts_out_of_range", f"older than retention or more than {MAX_FUTURE} ahead", topic, n_range
            )
        return readings

    # -- writing ------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        max_rows = self.settings.ingest.batch_max_rows
        while True:
            batch = await self._queue.get()
            # A writer that fell behind catches up with bigger transactions.
            while not self._queue.empty() and batch.rows < max_rows:
                batch.merge(self._queue.get_nowait())
            self._inflight = batch
            await self._write_with_retry(batch)
            self._source.ack(batch.acks)
            self._inflight = None
            m.PENDING_ROWS.set(self._pending_rows())

    async def _write_with_retry(self, batch: Batch, deadline: float | None = None) -> bool:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                result = await self._writer.write(batch)
            except (psycopg.Error, OSError) as err:
                m.WRITE_ERRORS.inc()
                log.error(
                    "batch write failed, will retry",
                    extra={"rows": batch.rows, "retry_in_s": delay, "error": str(err).strip()[:300]},
                )
            else:
                self._record(batch, result, time.perf_counter() - started)
                return True
            if deadline is not None and time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _record(self, batch: Batch, result: WriteResult, seconds: float) -> None:
        m.ROWS_WRITTEN.inc(result.inserted)
        m.ROWS_DUPLICATE.inc(result.duplicates)
        m.BATCHES.inc()
        m.BATCH_ROWS.observe(batch.rows)
        m.COMMIT_SECONDS.observe(seconds)
        m.STATUS_UPDATES.inc(result.statuses)
        if result.rejected_messages:
            m.INVALID.labels(reason="device_conflict").inc(result.rejected_messages)
            for c in result.conflicts:
                self._bad.warning(
                    "device_conflict", "message rejected", detail=str(c), topic=f"{c.site_key}/{c.device_key}"
                )

    # -- maintenance --------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        next_retention = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.settings.ingest.rollup_interval_s)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.settings.db.dsn,
                            autocommit=True,
                            application_name="lishui-ingest-maint",
                            connect_timeout=5,
                        )
                    await maintenance.refresh_rollups(conn)
                    if time.monotonic() >= next_retention:
                        await maintenance.apply_retention(conn, self.settings.db)
                        next_retention = time.monotonic() + RETENTION_EVERY_S
                except (psycopg.Error, OSError) as err:
                    log.warning("maintenance failed, will retry", extra={"error": str(err).strip()[:300]})
                    if conn is not None:
                        await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()


async def run_ingest(settings: Settings) -> None:
    """Entry point: run the ingest service until cancelled, flushing on shutdown."""
    await IngestService(settings).run()


def main() -> int:  # pragma: no cover - process entry point
    from core.service import run, setup_logging, start_metrics_endpoint
    from core.settings import get_settings

    settings = get_settings()
    setup_logging(settings.log_level, settings.log_json)
    if settings.metrics_port:
        start_metrics_endpoint(settings.metrics_port + 2)
    return run(lambda: run_ingest(settings))
