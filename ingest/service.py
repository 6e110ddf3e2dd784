"""The ingest service: MQTT telemetry and status -> TimescaleDB.

Flow::

    paho thread ─► MqttSource buffer ─► collector (validate, encode, batch) ─► queue ─► writers ─► ack
                                                          (2 batches in flight, one txn each, acked in order)
                                                                  maintenance: rollups, retention

- Telemetry comes from the shared subscription ``$share/{group}/{root}/v1/+/+/telemetry`` (QoS 1), so
  ingest scales by adding processes; or, with an empty ``share_group``, from the plain subscription
  ``{root}/v1/+/+/telemetry`` (one ingest per broker, which Mosquitto keeps across a restart of its own;
  it drops a shared subscription's messages published before the members are back). Either way
  de-duplication is by message identity, so a switch between the two rewrites nothing.
  Status comes from a plain subscription: shared subscriptions never
  deliver retained messages, and the retained status is the point of that channel; every instance
  applies it, guarded by ``status_at`` so that is idempotent.
- A message is acknowledged only after the transaction holding its rows committed (invalid messages
  too, in receipt order). A crash loses nothing: the broker redelivers, and the writer skips a message
  whose identity (device, seq, payload digest) is already committed, with the primary key behind it for
  the same reading under another identity (see ``ingest.writer``). Exactly once per reading, at least
  once per message.
- Performance (bench/ingest.py): the collector encodes each message's rows for COPY as it arrives and
  yields to the loop every ``COLLECT_CHUNK`` messages, so the writers' transactions never wait long on
  Python; two batches are written at once on two connections (the next batch's COPY overlaps the
  previous one's commit), their acknowledgements still in order.
- Back-pressure: a slow or unreachable database stops acknowledgements, the broker stops sending after
  the Receive Maximum window, and the backlog waits in the broker's persistent session. Memory is bounded
  by that window plus ``max_queued_batches`` batches and the ``WRITES_IN_FLIGHT`` being written; a
  failing write is retried with backoff, forever, and logged — nothing is dropped.
- Spill: once writes have failed for ``spill_after_s``, each batch's accepted messages are appended to
  a local fsynced spill (``ingest.spill``) and acknowledged after the fsync, so the broker's bounded
  queue drains while the database is away; the replay task writes the spill back when it answers (the
  writer's de-duplication by message identity makes replay after a crash, or a message both spilled
  and redelivered, a no-op). Past ``spill_max_bytes`` nothing more is acknowledged: the broker holds.
- Invalid input (topic, payload, unknown metric, implausible timestamp, device under another site) is
  counted by reason in ``lishui_ingest_invalid_total``, logged at most once per reason every 10 s, and
  skipped; the stream goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from core.metrics import BY_NAME
from core.payloads import (
    BINARY_MAGIC,
    BinaryTelemetry,
    PayloadError,
    Status,
    TelemetryBatch,
    decode,
    parse_binary_telemetry,
)
from core.registry import DeviceResolver
from core.settings import Settings
from core.topics import SITE_TARGET, Channel, parse, shared, subscription
from ingest import maintenance
from ingest import metrics as m
from ingest.rows import Columns, micros
from ingest.source import Inbound, MqttSource
from ingest.spill import Spill
from ingest.writer import Batch, TelemetryWriter, WriteResult, payload_digest

log = logging.getLogger(__name__)

# Readings further in the future than this are a device clock problem, not data.
MAX_FUTURE = timedelta(days=1)
RETENTION_EVERY_S = 3600.0
# Messages validated between two yields to the event loop (a few ms of work).
COLLECT_CHUNK = 64
_METRIC_IDS = {name: metric.id for name, metric in BY_NAME.items()}
_KNOWN_IDS = frozenset(_METRIC_IDS.values())
_DAY_US = 86_400_000_000
_MAX_FUTURE_US = MAX_FUTURE // timedelta(microseconds=1)
_TELEMETRY_MESSAGES = m.MESSAGES.labels(channel="telemetry")
# Batches written concurrently, on as many connections (acknowledged in order all the same).
WRITES_IN_FLIGHT = 2
# Longest pause between two attempts at a failed write: the database is back within this of its return.
WRITE_RETRY_MAX_S = 5.0


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
    group = settings.ingest.share_group or "plain"
    return f"lishui-ingest-{settings.topic_root}-{group}-{socket.gethostname()}"


def telemetry_filter(settings: Settings) -> str:
    """The shared subscription of ``share_group``, or with an empty group a plain one (one ingest per
    broker; the only kind Mosquitto 2.0 keeps across its own restart, see core.settings.IngestSettings)."""
    plain = subscription(Channel.TELEMETRY, settings.topic_root)
    return shared(settings.ingest.share_group, plain) if settings.ingest.share_group else plain


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
            {telemetry_filter(settings): 1, subscription(Channel.STATUS, root): 1},
            receive_maximum=receive_maximum,
            session_expiry_s=session_expiry_s,
        )
        self.resolver = DeviceResolver()
        # WRITES_IN_FLIGHT writers, each with its own connection (see _write_loop); _writer drains.
        self._writers = [TelemetryWriter(settings.db.dsn, self.resolver) for _ in range(WRITES_IN_FLIGHT)]
        self._writer = self._writers[0]
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=max_queued_batches)
        self._current = Batch()
        self._inflight: list[Batch] = []  # taken from the queue, not yet acknowledged; oldest first
        self._drain_timeout_s = drain_timeout_s
        self._bad = RateLimitedLog(log)
        cfg = settings.ingest
        self._spill_dir = Path(cfg.spill_dir) / self._source.client_id if cfg.spill_max_bytes else None
        self._spill: Spill | None = None  # opened by run()
        self._down_since: float | None = None  # monotonic time of the first failed write of an outage
        self._newest_committed = 0.0  # newest sample time committed (Unix s)
        self._counting = True  # invalid input is counted once, when received (not again on replay)

    @property
    def ready(self) -> asyncio.Event:
        """Set once connected and subscribed (cleared while the broker is away)."""
        return self._source.ready

    # -- lifecycle ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; on the way out the batches in hand are written (for at most
        ``drain_timeout_s``) and acknowledged; anything unwritten is redelivered by the broker later."""
        if self._spill_dir is not None:
            cfg = self.settings.ingest
            self._spill = Spill(
                self._spill_dir, max_bytes=cfg.spill_max_bytes, segment_bytes=cfg.spill_segment_bytes
            )
        self._source.start()
        log.info(
            "ingest started", extra={"client_id": self._source.client_id, "root": self.settings.topic_root}
        )
        tasks = [
            asyncio.create_task(self._collect(), name="ingest-collect"),
            asyncio.create_task(self._write_loop(), name="ingest-write"),
            asyncio.create_task(self._maintain(), name="ingest-maintain"),
            asyncio.create_task(self._observe(), name="ingest-observe"),
        ]
        if self._spill is not None:
            tasks.append(asyncio.create_task(self._replay(), name="ingest-replay"))
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
                for writer in self._writers:
                    await writer.close()
                if self._spill is not None:
                    self._spill.close()
                m.PENDING_ROWS.set(0)
                m.LAG_SECONDS.set(0)
                log.info("ingest stopped")

    async def _drain(self) -> None:
        batch = Batch()
        for held in self._inflight:
            batch.merge(held)
        while not self._queue.empty():
            batch.merge(self._queue.get_nowait())
        batch.merge(self._current)
        self._inflight, self._current = [], Batch()
        if batch and (
            await self._spilled(batch)  # (in an outage: no point waiting for the database)
            or await self._write_with_retry(batch, deadline=time.monotonic() + self._drain_timeout_s)
        ):
            self._source.ack(batch.acks)
        elif batch:
            log.warning("shutdown: batch left for redelivery", extra={"rows": batch.rows})

    # -- collecting ---------------------------------------------------------------------------------

    def _lag_s(self) -> float:
        """Age of the oldest message received and neither committed nor spilled."""
        held = [self._current, *self._queue._queue, *self._inflight]  # type: ignore[attr-defined]
        oldest = min((b.started for b in held if b), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    async def _observe(self) -> None:
        """The gauges that must move while everything else waits (on a database that is away)."""
        while True:
            m.LAG_SECONDS.set(self._lag_s())
            m.PENDING_ROWS.set(self._pending_rows())
            await asyncio.sleep(1.0)

    def _pending_rows(self) -> int:
        queued = sum(b.rows for b in self._queue._queue)  # type: ignore[attr-defined]
        return self._current.rows + queued + sum(b.rows for b in self._inflight)

    async def _collect(self) -> None:
        cfg = self.settings.ingest
        while True:
            timeout = None
            if self._current:
                timeout = max(0.0, self._current.started + cfg.batch_max_delay_s - time.monotonic())
            for item in await self._source.get_many(COLLECT_CHUNK, timeout):
                if not self._current:
                    self._current.started = time.monotonic()
                self._accept(item)
                if self._current.rows >= cfg.batch_max_rows:
                    await self._hand_over()
            if self._current and time.monotonic() >= self._current.started + cfg.batch_max_delay_s:
                await self._hand_over()
            m.PENDING_ROWS.set(self._pending_rows())
            # get_many does not suspend while messages are buffered: yield after each chunk so the
            # writer's transaction goes on as soon as the database answers (the backend waiting on
            # this loop inside the transaction was half of the writer's time).
            await asyncio.sleep(0)

    async def _hand_over(self) -> None:
        batch, self._current = self._current, Batch()
        await self._queue.put(batch)

    def _invalid(self, reason: str, detail: str, topic: str, n: int = 1) -> None:
        if not self._counting:
            return
        m.INVALID.labels(reason=reason).inc(n)
        self._bad.warning(reason, "invalid input skipped", detail=detail, topic=topic, count=n)

    def _accept(self, item: Inbound) -> None:
        self._current.acks.append((item.generation, item.mid, item.qos))
        self._add(self._current, item.topic, item.payload)

    def _add(self, target: Batch, topic: str, payload: bytes) -> None:
        """Validate one message and add what it holds to ``target`` (with the message itself, when a
        spill may need it); invalid input is counted and skipped."""
        counting = self._counting
        try:
            address = parse(topic, self.settings.topic_root)
        except ValueError as err:
            self._invalid("bad_topic", str(err), topic)
            return
        if address.device == SITE_TARGET:
            self._invalid("bad_topic", "the site target takes commands, not telemetry or status", topic)
            return
        pair = (address.site, address.device)
        if address.channel is Channel.TELEMETRY:
            if counting:
                _TELEMETRY_MESSAGES.inc()
            try:
                if payload[:4] == BINARY_MAGIC:
                    binary = parse_binary_telemetry(payload)
                    seq, found = binary.seq, self._binary_columns(binary, topic)
                else:
                    batch = decode(TelemetryBatch, payload)
                    seq, found = batch.seq, self._json_columns(batch, topic)
            except PayloadError as err:
                self._invalid("bad_payload", err.reason, topic)
                return
            if found is not None:
                # With its identity: the fast path de-duplicates by message.
                target.add_columns(pair, seq, payload_digest(payload), found)
                if self._spill is not None:
                    target.raw.append((topic, payload))
        elif address.channel is Channel.STATUS:
            if counting:
                m.MESSAGES.labels(channel="status").inc()
            if not payload:  # a retained status being cleared
                return
            try:
                status = decode(Status, payload)
            except PayloadError as err:
                self._invalid("bad_status", err.reason, topic)
                return
            target.add_status(pair, status)
            if self._spill is not None:
                target.raw.append((topic, payload))
        else:
            self._invalid("bad_topic", f"unexpected channel {address.channel}", topic)

    def _window_us(self) -> tuple[int, int]:
        """The plausible reading times now, in µs since the Unix epoch: not older than retention, not
        more than ``MAX_FUTURE`` ahead."""
        now = time.time_ns() // 1000
        return now - self.settings.db.retention_days * _DAY_US, now + _MAX_FUTURE_US

    def _skipped(self, topic: str, n_range: int, n_unknown: int, unknown: Any) -> None:
        if n_unknown:
            self._invalid("unknown_metric", f"not in the catalogue: {unknown}", topic, n_unknown)
        if n_range:
            self._invalid(
                "ts_out_of_range", f"older than retention or more than {MAX_FUTURE} ahead", topic, n_range
            )

    def _json_columns(self, batch: TelemetryBatch, topic: str) -> Columns | None:
        """A JSON message's readings as columns; None if none is left."""
        oldest, newest = self._window_us()
        stamps: list[int] = []
        counts: list[int] = []
        ids: list[int] = []
        values: list[float] = []
        unknown: set[str] = set()
        n_unknown = n_range = 0
        metric_id = _METRIC_IDS.get
        for sample in batch.samples:  # (the innermost loop of ingest: per sample, not per reading)
            us = micros(sample.ts)
            named = sample.values
            if not oldest <= us <= newest:
                n_range += len(named)
                continue
            found = [metric_id(name) for name in named]
            if None in found:
                kept = [(i, v) for i, v in zip(found, named.values(), strict=True) if i is not None]
                unknown.update(name for name, i in zip(named, found, strict=True) if i is None)
                n_unknown += len(found) - len(kept)
                if not kept:
                    continue
                ids += [i for i, _ in kept]
                values += [v for _, v in kept]
                counts.append(len(kept))
            else:
                ids += found  # type: ignore[arg-type]  # (no None in it)
                values += named.values()
                counts.append(len(found))
            stamps.append(us)
        if n_unknown or n_range:
            self._skipped(topic, n_range, n_unknown, sorted(unknown))
        return Columns(stamps, counts, ids, values) if stamps else None

    def _binary_columns(self, binary: BinaryTelemetry, topic: str) -> Columns | None:
        """A binary message's readings as columns: views of its payload unless some are skipped."""
        oldest, newest = self._window_us()
        stamps, counts, ids = binary.stamps_us, binary.counts, binary.metric_ids
        if oldest <= min(stamps) and max(stamps) <= newest and _KNOWN_IDS.issuperset(ids):
            return Columns(stamps, counts, ids, binary.values)
        # Some are skipped: the readings of samples out of the window, and unknown metrics.
        kept_stamps: list[int] = []
        kept_counts: list[int] = []
        kept_ids: list[int] = []
        kept_values: list[float] = []
        unknown: set[int] = set()
        n_unknown = n_range = start = 0
        for us, count in zip(stamps, counts, strict=True):
            end = start + count
            if not oldest <= us <= newest:
                n_range += count
            else:
                pairs = list(zip(ids[start:end], binary.values[start:end], strict=True))
                known = [(i, v) for i, v in pairs if i in _KNOWN_IDS]
                unknown.update(i for i, _ in pairs if i not in _KNOWN_IDS)
                n_unknown += count - len(known)
                if known:
                    kept_stamps.append(us)
                    kept_counts.append(len(known))
                    kept_ids += [i for i, _ in known]
                    kept_values += [v for _, v in known]
            start = end
        self._skipped(topic, n_range, n_unknown, sorted(unknown))
        return Columns(kept_stamps, kept_counts, kept_ids, kept_values) if kept_stamps else None

    # -- writing ------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Up to ``WRITES_IN_FLIGHT`` batches are written at once, each on its own connection: the next
        batch's identities and COPY overlap the previous one's markers, last_seen and commit (the row locks
        on markers and devices, taken in a fixed order, then serialize the two). Acknowledgements go out in
        batch order, each batch's only after its own commit and its predecessors' acknowledgements."""
        max_rows = self.settings.ingest.batch_max_rows
        pending: collections.deque[tuple[Batch, TelemetryWriter, asyncio.Task[bool]]] = collections.deque()
        getter: asyncio.Task[Batch] | None = None
        try:
            while True:
                while pending and pending[0][2].done():
                    batch, _, task = pending.popleft()
                    task.result()  # retried until written: only a bug gets here with an exception
                    self._source.ack(batch.acks)
                    self._inflight.remove(batch)
                    m.PENDING_ROWS.set(self._pending_rows())
                waits: set[asyncio.Future[Any]] = {pending[0][2]} if pending else set()
                if len(pending) < len(self._writers):
                    if getter is None:
                        getter = asyncio.ensure_future(self._queue.get())
                    waits.add(getter)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if getter is not None and getter.done():
                    batch, getter = getter.result(), None
                    # A writer that fell behind catches up with bigger transactions.
                    while not self._queue.empty() and batch.rows < max_rows:
                        batch.merge(self._queue.get_nowait())
                    busy = {id(w) for _, w, _ in pending}
                    writer = next(w for w in self._writers if id(w) not in busy)
                    self._inflight.append(batch)
                    task = asyncio.create_task(self._write_with_retry(batch, writer=writer))
                    pending.append((batch, writer, task))
        finally:
            # Cancelled: what is in flight is rolled back (or committed, which a rewrite turns into a
            # no-op); _drain writes and acknowledges it all, in order.
            if getter is not None:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    self._inflight.append(await getter)
            for _, _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, _, task in pending), return_exceptions=True)

    async def _write_with_retry(
        self, batch: Batch, deadline: float | None = None, writer: TelemetryWriter | None = None
    ) -> bool:
        """Write ``batch`` (retrying with backoff until ``deadline``, or forever), or spill it once the
        database has been away for ``spill_after_s``; True when it is committed or spilled."""
        writer = writer or self._writer
        delay = 0.2
        while True:
            if deadline is None and await self._spilled(batch):
                return True
            started = time.perf_counter()
            try:
                result = await writer.write(batch)
            except (psycopg.Error, OSError) as err:
                m.WRITE_ERRORS.inc()
                if self._down_since is None:
                    self._down_since = time.monotonic()
                log.error(
                    "batch write failed, will retry",
                    extra={"rows": batch.rows, "retry_in_s": delay, "error": str(err).strip()[:300]},
                )
            else:
                self._down_since = None
                self._record(batch, result, time.perf_counter() - started)
                return True
            if deadline is not None and time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(min(delay, max(self._spill_in(), 0.05)))
            delay = min(delay * 2, WRITE_RETRY_MAX_S)

    def _spill_in(self) -> float:
        """Seconds until batches are spilled (inf: not in an outage, or no spill)."""
        if self._spill is None or self._down_since is None:
            return float("inf")
        return self._down_since + self.settings.ingest.spill_after_s - time.monotonic()

    async def _spilled(self, batch: Batch) -> bool:
        """Append ``batch``'s messages to the spill (fsynced) if the database has been away long enough
        and the spill has room; True if the batch may now be acknowledged."""
        if self._spill is None or self._spill_in() > 0 or batch.readings:  # (loose readings: tests only)
            return False
        if not await self._spill.append(batch.raw):
            self._bad.warning(
                "spill_full",
                "spill full: messages left unacknowledged, the broker holds them",
                spill_bytes=self._spill.bytes,
            )
            return False
        return True

    # -- replaying the spill --------------------------------------------------------------------------

    async def _replay(self) -> None:
        """Write the spill back, oldest segment first, in batches through the same writer path; a segment
        is deleted once all its messages are committed. Its failures (a database still away) are the
        probe that ends the outage: the live path spills without trying the database meanwhile."""
        assert self._spill is not None
        spill = self._spill
        writer = TelemetryWriter(self.settings.db.dsn, self.resolver, application_name="lishui-ingest-replay")
        max_rows = self.settings.ingest.batch_max_rows
        try:
            while True:
                segment, records = await spill.oldest()
                batch = Batch()
                for i, (topic, payload) in enumerate(records):
                    self._counting = False
                    try:
                        self._add(batch, topic, payload)
                    finally:
                        self._counting = True
                    if batch.rows >= max_rows or i == len(records) - 1:
                        await self._replay_batch(writer, batch)
                        batch = Batch()
                        await asyncio.sleep(0)  # (live traffic goes on between replayed batches)
                await spill.release(segment)
                log.info(
                    "spill segment replayed",
                    extra={"messages": segment.messages, "spill_messages": spill.messages},
                )
        finally:
            await writer.close()

    async def _replay_batch(self, writer: TelemetryWriter, batch: Batch) -> None:
        delay = 0.2
        while batch:
            started = time.perf_counter()
            try:
                result = await writer.write(batch)
            except (psycopg.Error, OSError) as err:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._bad.warning("replay_failed", "spill replay failed, will retry", error=str(err)[:300])
            else:
                self._down_since = None
                self._record(batch, result, time.perf_counter() - started)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, WRITE_RETRY_MAX_S)

    def _record(self, batch: Batch, result: WriteResult, seconds: float) -> None:
        m.ROWS_WRITTEN.inc(result.inserted)
        m.ROWS_DUPLICATE.inc(result.duplicates)
        m.BATCHES.inc()
        m.BATCH_ROWS.observe(batch.rows)
        m.COMMIT_SECONDS.observe(seconds)
        m.STATUS_UPDATES.inc(result.statuses)
        if batch.keyed and result.inserted:
            newest = max(msg.newest_us for msg in batch.keyed) / 1e6
            if newest > self._newest_committed:
                self._newest_committed = newest
                m.NEWEST_COMMITTED.set(newest)
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
                    await maintenance.refresh_rollups(conn, grace_s=self.settings.ingest.rollup_grace_s)
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
