"""Ingest benchmark: a fleet's telemetry, published at full speed over MQTT, committed to TimescaleDB by one
ingest process, end to end; against two yardsticks on the same kind of rows:

- raw: the committed rows exported to CSV and loaded with ``psql \\copy`` (the database's own limit);
- naive (the yardstick of ``ratio_naive``): the common hobby design, end to end: the fleet publishes one
  reading per message and one paho subscriber does one autocommitted INSERT per message, so one INSERT per
  reading;
- naive, batched messages (secondary, printed only): the same subscriber on the fleet's batched messages,
  one autocommitted multi-row INSERT per message (50 readings).

    .venv/bin/python bench/ingest.py            # 10,000 devices, 5 M readings (about 2 minutes)
    .venv/bin/python bench/ingest.py --quick    # 2,000 devices, 0.5 M readings (about 20 s)

The fleet publishes the binary telemetry encoding (core.payloads, for high-volume publishers); the e2e
phase is then run again on the same rows with JSON payloads (the gateway's default), to show what the
encoding buys (``--encoding json`` measures JSON only; ``--no-json`` skips the second phase).

Everything is throwaway: a database ``lishui_bench_<run>`` (created, migrated, dropped), a topic root and
share group of the run's own, and by default a Mosquitto of its own on a free port (``--broker own``: the
same binary, no persistence, ``max_queued_messages 0``), so other work on the shared broker neither
disturbs nor is disturbed; ``--broker system`` uses 127.0.0.1:1883 instead. Publishers run in processes of
their own, and so does the ingest service (the real ``IngestService``): no two share a GIL. A publisher
is a minimal MQTT 3.1.1 client (QoS 1, packets encoded up front, every PUBACK matched to its message):
a real fleet publishes from its own machines, and paho's client (``--publisher paho``) took about a
third of the 2 cores away from the system under test.

Besides rates it reports CPU seconds per process group (from /proc), the ingest process's threads and
peak RSS (VmHWM), the writer's own counters, and what the PostgreSQL backends were doing (pg_stat_activity
sampled ten times a second). ``--rollup-interval`` / ``--batch-rows`` override ingest's settings, to see
what the rollup refresh or the batch size costs.

Ends with ONE JSON line: e2e_per_s, raw_copy_per_s, naive_per_s (hobby design: one INSERT per reading),
naive_batched_per_s (one INSERT per 50-reading message), ratio_raw (e2e/raw), ratio_naive (e2e/naive),
ratio_naive_batched, peak_rss_mb, readings, lost (published minus committed; exit status 1 unless 0),
encoding, e2e_json_per_s and ratio_raw_json (the JSON phase), and more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core import db, registry
from core.metrics import CATALOGUE
from core.payloads import (
    PayloadError,
    Sample,
    TelemetryBatch,
    TelemetryEncoding,
    decode_telemetry,
    encode_telemetry,
)
from core.settings import DatabaseSettings, IngestSettings, MqttSettings, Settings
from core.topics import Channel, topic

SERVER_DSN = os.environ.get("LISHUI_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
METRICS = tuple(m.name for m in CATALOGUE[:10])  # 10 readings per sample
TOWNS = ("liyang", "lipu", "mengxi", "yanjing", "jinluo", "matoupu", "cennan", "guanyuan")
KINDS = ("pv_inverter", "battery", "meter", "load")
TICK = os.sysconf("SC_CLK_TCK")
SPAWN = mp.get_context("spawn")
Progress = SynchronizedArray  # [rows committed, monotonic time of the last change, messages seen]


# -- the fleet ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the fleet sends: every device ``messages`` batches of ``samples`` samples of 10 metrics,
    one sample every ``period_s`` (a gateway batching ``samples`` polls into one message)."""

    devices: int
    sites: int
    messages: int  # per device
    samples: int  # per message
    period_s: float
    start: datetime
    one_reading: bool = False  # one reading per message (the hobby design): ``samples`` must be 1
    encoding: str = "json"  # of the telemetry payloads (core.payloads.TelemetryEncoding)

    @property
    def total_messages(self) -> int:
        return self.devices * self.messages

    @property
    def per_message(self) -> int:
        return 1 if self.one_reading else self.samples * len(METRICS)

    @property
    def readings(self) -> int:
        return self.total_messages * self.per_message

    @property
    def realtime_per_s(self) -> float:
        """Readings per second the fleet produces when sampling in real time."""
        return self.devices * len(METRICS) / self.period_s


def device_key(i: int) -> str:
    return f"dev{i:05d}"


def site_key(plan: Plan, i: int) -> str:
    return f"site{i % plan.sites:02d}"


def make_payload(plan: Plan, device: int, seq: int) -> bytes:
    if plan.one_reading:  # message seq carries metric seq % 10 of sample seq // 10
        n, j = divmod(seq, len(METRICS))
        value = float((device * 7 + n * 13 + j * 101) % 5000) / 10.0
        ts = plan.start + timedelta(seconds=n * plan.period_s)
        one = TelemetryBatch(seq=seq, samples=[Sample(ts=ts, values={METRICS[j]: value})])
        return encode_telemetry(one, plan.encoding)
    samples = []
    for k in range(plan.samples):
        n = seq * plan.samples + k
        values = {
            name: float((device * 7 + n * 13 + j * 101) % 5000) / 10.0 for j, name in enumerate(METRICS)
        }
        samples.append(Sample(ts=plan.start + timedelta(seconds=n * plan.period_s), values=values))
    return encode_telemetry(TelemetryBatch(seq=seq, samples=samples), plan.encoding)


# -- process accounting (/proc, no psutil) -------------------------------------------------------


def cpu_seconds(path: str) -> float:
    """utime + stime of a ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``; 0 if gone."""
    try:
        text = Path(path).read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def process_cpu(pid: int) -> float:
    return cpu_seconds(f"/proc/{pid}/stat")


def thread_cpu(pid: int) -> dict[int, float]:
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return {tid: cpu_seconds(f"/proc/{pid}/task/{tid}/stat") for tid in tids}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


@dataclass
class CpuWatch:
    """CPU seconds of the processes taking part, between ``start`` and ``stop``; and of the whole machine
    (the cores are shared: what other work used in that time is reported as ``other processes``)."""

    groups: dict[str, list[int]]
    before: dict[int, float] = field(default_factory=dict)
    after: dict[int, float] = field(default_factory=dict)
    machine: tuple[float, float] = (0.0, 0.0)  # (busy, total) CPU s in the window

    def _all(self) -> dict[int, float]:
        pids = {p for ps in self.groups.values() for p in ps} | set(pids_named("postgres"))
        return {p: process_cpu(p) for p in pids}

    def start(self) -> None:
        self.before = self._all()
        self.machine = machine_cpu()

    def stop(self) -> None:
        self.after = self._all()
        busy, total = machine_cpu()
        self.machine = (busy - self.machine[0], total - self.machine[1])
        self.groups["postgres (all)"] = pids_named("postgres")

    def used(self, pids: list[int]) -> float:
        return sum(self.after.get(p, 0.0) - self.before.get(p, 0.0) for p in pids)

    def table(self) -> dict[str, float]:
        out = {name: round(self.used(pids), 2) for name, pids in self.groups.items()}
        ours = sum(v for k, v in out.items() if k != "postgres (all)") + out.get("postgres (all)", 0.0)
        out["machine busy"] = round(self.machine[0], 2)
        out["machine idle"] = round(self.machine[1] - self.machine[0], 2)
        out["other processes"] = round(max(0.0, self.machine[0] - ours), 2)
        return out


class WaitSampler(threading.Thread):
    """Samples what the consumers' PostgreSQL backends are doing (pg_stat_activity) ten times a second:
    ``active`` with no wait is CPU; ``Client/ClientRead`` is waiting for the client (COPY data, the next
    statement); ``Lock/...`` is waiting for another transaction; ``IO/...`` and ``LWLock/...`` the server."""

    def __init__(self, dsn: str, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self._dsn = dsn
        self._interval_s = interval_s
        self._halt = threading.Event()
        self.counts: dict[str, dict[str, int]] = {}

    def run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._halt.wait(self._interval_s):
                rows = conn.execute(
                    "SELECT application_name, state, wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name LIKE %s",
                    ("lishui%",),
                ).fetchall()
                for app, state, wait_type, wait_event in rows:
                    label = f"{state}: {wait_type}/{wait_event}" if wait_type else f"{state}: on CPU"
                    per_app = self.counts.setdefault(app, {})
                    per_app[label] = per_app.get(label, 0) + 1

    def stop(self) -> dict[str, dict[str, float]]:
        """Per application, the share of samples (%) in each state, largest first."""
        self._halt.set()
        self.join(5)
        out: dict[str, dict[str, float]] = {}
        for app, counts in self.counts.items():
            total = sum(counts.values())
            ranked = sorted(counts.items(), key=lambda kv: -kv[1])
            out[app] = {label: round(100 * n / total, 1) for label, n in ranked if n / total >= 0.01}
        return out


# -- the broker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    pid: int | None = None  # a broker of our own
    log: Path | None = None

    def dropped_notices(self) -> list[str]:
        if self.log is None or not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if "dropped" in line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_broker(workdir: Path) -> Iterator[Broker]:
    """A Mosquitto of the bench's own on a free port: no persistence, no per-session queue limit."""
    port = free_port()
    log = workdir / "mosquitto.log"
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        # The Debian default is 1000: a backlog beyond ingest's receive window plus 1000 is dropped.
        "max_queued_messages 0\n"
        f"user {getpass.getuser()}\nlog_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start on port {port}; see {log}") from None
                time.sleep(0.05)
        yield Broker("127.0.0.1", port, proc.pid, log)
    finally:
        proc.terminate()
        proc.wait(10)


def forget_session(broker: Broker, client_id: str) -> None:
    """Discard a persistent session (clean start, expiry 0) so the broker stops queueing for it."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    with contextlib.suppress(OSError):
        client.connect(broker.host, broker.port, clean_start=True, properties=props)
        client.loop_start()
        time.sleep(0.2)
        client.disconnect()
        client.loop_stop()


# -- the database ---------------------------------------------------------------------------------


async def create_database(run_id: str) -> str:
    dsn = db.with_database(SERVER_DSN, f"lishui_bench_{run_id}")
    await db.ensure_database(dsn)
    await db.migrate(dsn)
    return dsn


async def register_fleet(dsn: str, plan: Plan) -> None:
    """Sites through core.registry, the devices in one bulk statement."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for s in range(plan.sites):
            await registry.upsert_site(conn, site_key(plan, s), f"Bench site {s}", town_key=TOWNS[s % 8])
        await conn.execute(
            "INSERT INTO devices (key, site_id, kind, rated_power_w)"
            " SELECT u.key, s.id, u.kind, 10000 FROM unnest(%s::text[], %s::text[], %s::text[])"
            " AS u(key, site, kind) JOIN sites s ON s.key = u.site",
            (
                [device_key(i) for i in range(plan.devices)],
                [site_key(plan, i) for i in range(plan.devices)],
                [KINDS[i % len(KINDS)] for i in range(plan.devices)],
            ),
        )


def drop_database(dsn: str, attempts: int = 10) -> None:
    """Drop it, retrying for a while (the server may be restarting: it is shared with other work)."""
    name = dsn.rsplit("/", 1)[1]
    for attempt in range(attempts):
        try:
            with psycopg.connect(SERVER_DSN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
            return
        except psycopg.OperationalError:
            if attempt == attempts - 1:
                print(f"could not drop database {name}: drop it by hand", file=sys.stderr)
                raise
            time.sleep(2)


def execute(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.encode())


def scalar(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
        return row[0] if row else None


def reset_tables(dsn: str) -> None:
    """Empty the hypertable (and what ingest derived from it), then checkpoint so no phase pays for the
    previous one's dirty pages."""
    execute(dsn, "TRUNCATE telemetry, telemetry_1m, telemetry_15m, rollup_dirty_1m, rollup_dirty_15m")
    execute(dsn, "CHECKPOINT")


def psql(dsn: str, command: str) -> None:
    subprocess.run(["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command], check=True)


# -- publishers (child processes) -----------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    published: int
    acked: int
    seconds: float
    cpu_s: float


def _shard_messages(root: str, plan: Plan, shard: int, shards: int) -> list[tuple[str, bytes]]:
    devices = range(shard, plan.devices, shards)
    return [
        (topic(site_key(plan, d), device_key(d), Channel.TELEMETRY, root=root), make_payload(plan, d, seq))
        for seq in range(plan.messages)
        for d in devices
    ]


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _raw_publisher(broker: Broker, root: str, plan: Plan, shard: int, shards: int, pipe: Connection) -> None:
    """Child: the fleet's share ``shard`` as a minimal MQTT 3.1.1 client: PUBLISH packets (QoS 1) encoded
    up front, written in large chunks with up to ``window`` unacknowledged, each PUBACK matched to its
    message. A real fleet publishes from its own machines; here the publishers share the 2 cores with the
    system under test, so they should take as little of them as they can (paho took about a third)."""
    import select

    window = 4096  # unacknowledged messages; far below the 65,535 packet ids, so ids never collide
    messages = _shard_messages(root, plan, shard, shards)
    packets = [
        _mqtt_packet(0x32, _mqtt_string(name) + (i % 65535 + 1).to_bytes(2, "big") + payload)
        for i, (name, payload) in enumerate(messages)
    ]
    sock = socket.create_connection((broker.host, broker.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = b"\x00\x04MQTT\x04\x02" + (600).to_bytes(2, "big") + _mqtt_string(f"{root}-pub{shard}")
    sock.sendall(_mqtt_packet(0x10, connect))
    connack = sock.recv(4)
    if connack[:2] != b"\x20\x02" or connack[3] != 0:
        raise RuntimeError(f"publisher {shard}: connection refused ({connack!r})")
    sock.setblocking(False)
    pipe.send("ready")
    pipe.recv()  # go
    started = time.monotonic()
    outstanding = bytearray(65536)  # 1 while the message with that packet id waits for its PUBACK
    sent = acked = 0
    out = bytearray()
    inbox = bytearray()
    while acked < len(packets) and time.monotonic() - started < 600:
        while sent < len(packets) and sent - acked < window and len(out) < 1 << 18:
            out += packets[sent]
            outstanding[sent % 65535 + 1] = 1
            sent += 1
        readable, writable, _ = select.select([sock], [sock] if out else [], [], 1.0)
        if writable:
            del out[: sock.send(out)]
        if readable:
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError(f"publisher {shard}: the broker closed the connection")
            inbox += data
            whole = len(inbox) - len(inbox) % 4  # only PUBACKs come our way: 0x40 0x02 id id
            for at in range(0, whole, 4):
                if inbox[at] != 0x40 or inbox[at + 1] != 2:
                    raise RuntimeError(f"publisher {shard}: unexpected packet {bytes(inbox[at : at + 4])!r}")
                mid = inbox[at + 2] << 8 | inbox[at + 3]
                if outstanding[mid]:
                    outstanding[mid] = 0
                    acked += 1
            del inbox[:whole]
    seconds = time.monotonic() - started
    sock.setblocking(True)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(PublishResult(len(packets), acked, seconds, usage.ru_utime + usage.ru_stime))
    pipe.recv()  # exit


def _paho_publisher(broker: Broker, root: str, plan: Plan, shard: int, shards: int, pipe: Connection) -> None:
    """Child: encode this shard's messages, say ready, publish them all at QoS 1 with paho when told, as
    fast as the broker acknowledges; report; stay alive (for CPU accounting) until told to exit."""
    messages = _shard_messages(root, plan, shard, shards)
    window = threading.BoundedSemaphore(4096)  # unacknowledged messages in hand
    acked = 0

    def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        nonlocal acked
        acked += 1
        window.release()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-pub{shard}", protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(1000)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    pipe.send("ready")
    pipe.recv()  # go
    started = time.monotonic()
    for name, payload in messages:
        window.acquire()
        client.publish(name, payload, qos=1)
    while acked < len(messages) and time.monotonic() - started < 600:
        time.sleep(0.005)
    seconds = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(PublishResult(len(messages), acked, seconds, usage.ru_utime + usage.ru_stime))
    pipe.recv()  # exit


@dataclass
class Publishers:
    procs: list[mp.process.BaseProcess]
    pipes: list[Connection]
    results: list[PublishResult] = field(default_factory=list)

    @classmethod
    def start(cls, broker: Broker, root: str, plan: Plan, count: int, kind: str = "raw") -> Publishers:
        target = _raw_publisher if kind == "raw" else _paho_publisher
        pipes: list[Connection] = []
        procs: list[mp.process.BaseProcess] = []
        for shard in range(count):
            ours, theirs = SPAWN.Pipe()
            proc = SPAWN.Process(target=target, args=(broker, root, plan, shard, count, theirs), daemon=True)
            proc.start()
            pipes.append(ours)
            procs.append(proc)
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a publisher did not get ready")
            pipe.recv()
        return cls(procs, pipes)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def go(self) -> float:
        for pipe in self.pipes:
            pipe.send("go")
        return time.monotonic()

    def done(self) -> bool:
        if len(self.results) < len(self.pipes):
            self.results = [pipe.recv() for pipe in self.pipes] if all(p.poll() for p in self.pipes) else []
        return len(self.results) == len(self.pipes)

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def wait(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.done():
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError("a publisher did not finish")
            time.sleep(0.05)

    def finish(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("exit")
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()

    @property
    def acked(self) -> int:
        return sum(r.acked for r in self.results)

    @property
    def seconds(self) -> float:
        return max((r.seconds for r in self.results), default=0.0)

    @property
    def cpu_s(self) -> float:
        return sum(r.cpu_s for r in self.results)


# -- consumers (child processes): the ingest service, and the naive one ---------------------------


def _ingest_child(settings: Settings, pipe: Connection, progress: Progress) -> None:
    from core.service import setup_logging

    # This file is bench/ingest.py and its folder heads sys.path: "ingest" must be the package, not us.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    setup_logging("WARNING", json_lines=False)
    asyncio.run(_run_ingest(settings, pipe, progress))


async def _run_ingest(settings: Settings, pipe: Connection, progress: Progress) -> None:
    """The real ``IngestService`` (what ``run_ingest`` runs), built here so the parent learns when it is
    subscribed, and with a short session expiry so a shared broker forgets it soon after the run."""
    from prometheus_client import REGISTRY

    from ingest import metrics
    from ingest.service import IngestService

    service = IngestService(settings, session_expiry_s=300)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), 30)
    pipe.send("ready")

    async def publish_progress() -> None:  # the writer's counter, for the parent to watch
        while True:
            # (The counter itself: REGISTRY.get_sample_value collects every metric, /proc reads included,
            # which was a few % of the process's CPU at this polling rate.)
            rows = metrics.ROWS_WRITTEN._value.get()
            if rows != progress[0]:
                progress[0], progress[1] = rows, time.monotonic()
            await asyncio.sleep(0.05)

    reporter = asyncio.create_task(publish_progress())
    await stop.wait()
    reporter.cancel()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    pipe.recv()
    pipe.send(_ingest_counters(REGISTRY))


def _ingest_counters(reg: Any) -> dict[str, float]:
    names = {
        "messages": ("lishui_ingest_messages_total", {"channel": "telemetry"}),
        "rows_written": ("lishui_ingest_rows_written_total", {}),
        "rows_duplicate": ("lishui_ingest_rows_duplicate_total", {}),
        "batches": ("lishui_ingest_batches_total", {}),
        "write_errors": ("lishui_ingest_write_errors_total", {}),
        "commit_s_sum": ("lishui_ingest_commit_seconds_sum", {}),
        "batch_rows_sum": ("lishui_ingest_batch_rows_sum", {}),
        "rollup_buckets": ("lishui_ingest_rollup_buckets_total", {}),
    }
    out = {key: reg.get_sample_value(name, labels) or 0.0 for key, (name, labels) in names.items()}
    for metric in reg.collect():
        if metric.name == "lishui_ingest_invalid":
            out["invalid"] = sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return out


def _naive_child(broker: Broker, root: str, dsn: str, pipe: Connection, progress: Progress) -> None:
    """The hobby ingestor: one subscriber, per message one INSERT of its rows, autocommit. (Devices are
    looked up in a dict loaded up front, and payloads validated like ingest does: only the design differs.)"""
    conn = psycopg.connect(dsn, autocommit=True, application_name="lishui-bench-naive")
    ids: dict[str, int] = dict(conn.execute("SELECT key, id FROM devices").fetchall())
    metric_ids = {m.name: m.id for m in CATALOGUE}
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            batch = decode_telemetry(msg.payload)
        except PayloadError:
            return
        device = ids[msg.topic.split("/")[3]]
        params: list[Any] = []
        for sample in batch.samples:
            for name, value in sample.values.items():
                params += (sample.ts, device, metric_ids[name], value)
        rows = len(params) // 4
        conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric_id, value) VALUES "
            + ",".join(["(%s, %s, %s, %s)"] * rows),
            params,
        )
        progress[0], progress[1], progress[2] = progress[0] + rows, time.monotonic(), progress[2] + 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-naive", protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.subscribe(f"{root}/v1/+/+/telemetry", qos=1)
    client.loop_start()
    subscribed.wait(10)
    pipe.send("ready")
    pipe.recv()  # stop
    client.disconnect()
    client.loop_stop()
    conn.close()
    pipe.send({})


@dataclass
class Consumer:
    proc: mp.process.BaseProcess
    pipe: Connection
    progress: Progress

    @classmethod
    def start(cls, target: Any, *args: Any) -> Consumer:
        ours, theirs = SPAWN.Pipe()
        progress = SPAWN.Array("d", 3, lock=False)
        proc = SPAWN.Process(target=target, args=(*args, theirs, progress), daemon=True)
        proc.start()
        deadline = time.monotonic() + 60
        while not ours.poll(0.1):
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(f"{target.__name__} did not get ready")
        ours.recv()
        return cls(proc, ours, progress)

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> dict[str, float]:
        self.pipe.send("stop")
        stats: dict[str, float] = self.pipe.recv() if self.pipe.poll(60) else {}
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
        return stats


# -- one measured phase ---------------------------------------------------------------------------


@dataclass
class Timeline:
    start: float
    points: list[tuple[float, float]] = field(default_factory=list)  # (s since start, rows committed)
    last_commit_s: float = 0.0

    def rate_between(self, lo: float, hi: float) -> float:
        """Committed rows per second between the moments lo and hi of the final count were reached."""
        final = self.points[-1][1] if self.points else 0.0
        t_lo = next((t for t, r in self.points if r >= lo * final), 0.0)
        t_hi = next((t for t, r in self.points if r >= hi * final), 0.0)
        return (hi - lo) * final / (t_hi - t_lo) if t_hi > t_lo else 0.0


def watch(
    consumer: Consumer, publishers: Publishers, expected: int, started: float, stall_s: float
) -> Timeline:
    """Poll the consumer's committed-row counter until it reaches ``expected``, or stops moving for
    ``stall_s`` after the publishers are done (a shortfall, reported by the caller)."""
    timeline = Timeline(started)
    while True:
        time.sleep(0.05)
        rows, changed = consumer.progress[0], consumer.progress[1]
        now = time.monotonic()
        timeline.points.append((now - started, rows))
        if rows > 0:
            timeline.last_commit_s = changed - started
        if rows >= expected:
            return timeline
        if (publishers.done() or not publishers.alive()) and now - max(changed, started) > stall_s:
            return timeline


@dataclass
class PhaseResult:
    committed: int
    published: int
    seconds: float  # first publish -> last commit
    publish_s: float
    timeline: Timeline
    stats: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    main_thread_cpu: float = 0.0  # the consumer's main thread (ingest: the asyncio loop)
    other_threads_cpu: float = 0.0  # paho's network thread and any others
    peak_rss_mb: float = 0.0
    waits: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.committed / self.seconds if self.seconds else 0.0


def run_phase(
    consumer: Consumer, broker: Broker, root: str, plan: Plan, dsn: str, args: argparse.Namespace
) -> PhaseResult:
    """Publish the plan at full speed and watch the consumer commit it; CPU, threads and peak RSS are read
    before the consumer stops (its database backends were opened during the phase, so their lifetime CPU
    is the phase's)."""
    pubs = Publishers.start(broker, root, plan, args.publishers, args.publisher)
    stall_s = args.stall
    groups = {"consumer": [consumer.pid], "publishers": pubs.pids}
    groups["mosquitto"] = [broker.pid] if broker.pid else pids_named("mosquitto")
    cpu = CpuWatch(groups)
    threads0 = thread_cpu(consumer.pid)
    sampler = WaitSampler(dsn)
    cpu.start()
    sampler.start()
    try:
        started = pubs.go()
        timeline = watch(consumer, pubs, plan.readings, started, stall_s)
        cpu.stop()
        waits = sampler.stop()
        threads = {t: c - threads0.get(t, 0.0) for t, c in thread_cpu(consumer.pid).items()}
        rss = peak_rss_mb(consumer.pid)
        backends = backend_cpu(dsn)
        pubs.wait()
    finally:
        pubs.finish()
    stats = consumer.stop()
    return PhaseResult(
        committed=int(scalar(dsn, "SELECT count(*) FROM telemetry")),
        published=pubs.acked * plan.per_message,
        seconds=timeline.last_commit_s,
        publish_s=pubs.seconds,
        timeline=timeline,
        stats=stats,
        cpu=cpu.table() | backends,
        main_thread_cpu=threads.get(consumer.pid, 0.0),
        other_threads_cpu=sum(c for t, c in threads.items() if t != consumer.pid),
        peak_rss_mb=rss,
        waits=waits,
    )


def backend_cpu(dsn: str) -> dict[str, float]:
    """Lifetime CPU seconds of the consumers' open PostgreSQL backends, by application name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE %s",
            ("lishui%",),
        ).fetchall()
    out: dict[str, float] = {}
    for name, pid in rows:
        out[f"pg backend {name}"] = round(out.get(f"pg backend {name}", 0.0) + process_cpu(pid), 2)
    return out


def ingest_settings(broker: Broker, dsn: str, root: str, run_id: str, args: argparse.Namespace) -> Settings:
    tuning = {"rollup_interval_s": args.rollup_interval, "batch_max_rows": args.batch_rows}
    return Settings(
        db=DatabaseSettings(dsn=dsn),
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        ingest=IngestSettings(
            share_group=f"bench-{run_id}",
            client_id=f"lishui-bench-ingest-{run_id}",
            **{k: v for k, v in tuning.items() if v is not None},
        ),
        topic_root=root,
        log_level="WARNING",
        _env_file=None,
    )


def run_e2e(broker: Broker, dsn: str, plan: Plan, run_id: str, args: argparse.Namespace) -> PhaseResult:
    root = f"lishui-bench-{run_id}"
    settings = ingest_settings(broker, dsn, root, run_id, args)
    reset_tables(dsn)
    consumer = Consumer.start(_ingest_child, settings)
    try:
        return run_phase(consumer, broker, root, plan, dsn, args)
    finally:
        if consumer.proc.is_alive():
            consumer.proc.terminate()
        forget_session(broker, str(settings.ingest.client_id))


def run_naive(broker: Broker, dsn: str, plan: Plan, run_id: str, args: argparse.Namespace) -> PhaseResult:
    root = f"lishui-bench-{run_id}-naive"
    reset_tables(dsn)
    consumer = Consumer.start(_naive_child, broker, root, dsn)
    try:
        return run_phase(consumer, broker, root, plan, dsn, args)
    finally:
        if consumer.proc.is_alive():
            consumer.proc.terminate()


@dataclass(frozen=True)
class RawResult:
    rows: int
    seconds: float
    csv_mb: float

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_raw_copy(dsn: str, workdir: Path) -> RawResult:
    """The committed rows, exported to CSV, loaded back into the emptied hypertable with psql's \\copy."""
    path = workdir / "telemetry.csv"
    psql(dsn, f"\\copy (SELECT ts, device_id, metric_id, value FROM telemetry) TO '{path}' CSV")
    reset_tables(dsn)
    started = time.perf_counter()
    psql(dsn, f"\\copy telemetry(ts, device_id, metric_id, value) FROM '{path}' CSV")
    seconds = time.perf_counter() - started
    rows = int(scalar(dsn, "SELECT count(*) FROM telemetry"))
    return RawResult(rows, seconds, path.stat().st_size / 1e6)


def naive_plan(plan: Plan, messages: int, *, one_reading: bool = False) -> Plan:
    if one_reading:
        plan = replace(plan, samples=1, one_reading=True)
    if messages >= plan.devices:
        return replace(plan, messages=max(1, messages // plan.devices))
    return replace(plan, devices=messages, messages=1)


# -- report ---------------------------------------------------------------------------------------


def print_e2e(plan: Plan, e2e: PhaseResult, broker: str) -> None:
    wall, cpu = e2e.seconds, e2e.cpu["consumer"]
    print(
        f"fleet: {plan.devices:,} devices on {plan.sites} sites, {plan.messages} messages each of"
        f" {plan.samples} samples x {len(METRICS)} metrics = {plan.readings:,} readings in"
        f" {plan.total_messages:,} messages, {plan.encoding} payloads; broker: {broker}"
    )
    print(
        f"ingest e2e: {e2e.per_s:,.0f} readings/s ({e2e.committed:,} committed of {e2e.published:,} published"
        f" in {wall:.1f} s, first publish to last commit; publishers done after {e2e.publish_s:.1f} s);"
        f" steady (10-90 % of rows): {e2e.timeline.rate_between(0.1, 0.9):,.0f}/s"
    )
    print(
        f"  ingest process: {cpu:.1f} CPU s ({100 * cpu / wall:.0f} % of a core) ="
        f" {cpu_per_million(e2e):.1f} CPU s per million readings (asyncio thread {e2e.main_thread_cpu:.1f} s,"
        f" paho thread {e2e.other_threads_cpu:.1f} s); peak RSS {e2e.peak_rss_mb:.0f} MB"
    )
    stats = e2e.stats
    if stats.get("batches"):
        batches = stats["batches"]
        print(
            f"  writer: {batches:.0f} batches of {stats['batch_rows_sum'] / batches:,.0f} rows,"
            f" {1000 * stats['commit_s_sum'] / batches:.0f} ms each to write+commit ="
            f" {100 * stats['commit_s_sum'] / wall:.0f} % of the wall time; rows counted by the writer"
            f" {stats['rows_written']:,.0f}, invalid {stats.get('invalid', 0):.0f},"
            f" write errors {stats['write_errors']:.0f}"
        )
    print(f"  CPU s in that time (2 cores = {2 * wall:.0f} CPU s): {e2e.cpu}")
    for app, waits in e2e.waits.items():
        print(f"  {app} backend, % of samples: {waits}")


def print_raw(raw: RawResult) -> None:
    print(
        f"raw \\copy: {raw.per_s:,.0f} readings/s ({raw.rows:,} rows from a {raw.csv_mb:.0f} MB CSV"
        f" in {raw.seconds:.1f} s)"
    )


def print_naive(naive: PhaseResult, label: str) -> None:
    print(
        f"naive ({label}): {naive.per_s:,.0f} readings/s ({naive.committed:,}"
        f" committed of {naive.published:,} published in {naive.seconds:.1f} s);"
        f" CPU s: {naive.cpu}"
    )


def cpu_per_million(e2e: PhaseResult) -> float:
    return e2e.cpu["consumer"] / e2e.committed * 1e6 if e2e.committed else 0.0


def summarize(
    plan: Plan, e2e: PhaseResult, raw: RawResult, naive: PhaseResult, batched: PhaseResult, broker: str
) -> dict[str, Any]:
    ratio_raw = e2e.per_s / raw.per_s if raw.per_s else 0.0
    ratio_naive = e2e.per_s / naive.per_s if naive.per_s else 0.0
    ratio_batched = e2e.per_s / batched.per_s if batched.per_s else 0.0
    print(
        f"ratios: e2e/raw {ratio_raw:.2f}, e2e/naive (one INSERT per reading) {ratio_naive:.1f},"
        f" e2e/naive batched (one INSERT per 50-reading message) {ratio_batched:.2f}"
    )
    print(
        f"a fleet this size sampling every {plan.period_s:g} s makes {plan.realtime_per_s:,.0f} readings/s:"
        f" ingest headroom {e2e.per_s / plan.realtime_per_s:.2f}x"
    )
    return {
        "devices": plan.devices,
        "readings": e2e.committed,
        "published": e2e.published,
        "lost": e2e.published - e2e.committed,
        "e2e_per_s": round(e2e.per_s),
        "e2e_steady_per_s": round(e2e.timeline.rate_between(0.1, 0.9)),
        "raw_copy_per_s": round(raw.per_s),
        "naive_per_s": round(naive.per_s),
        "naive_readings": naive.committed,
        "naive_lost": naive.published - naive.committed,
        "naive_batched_per_s": round(batched.per_s),
        "naive_batched_readings": batched.committed,
        "naive_batched_lost": batched.published - batched.committed,
        "ratio_raw": round(ratio_raw, 3),
        "ratio_naive": round(ratio_naive, 2),
        "ratio_naive_batched": round(ratio_batched, 2),
        "cpu_s_per_m_readings": round(cpu_per_million(e2e), 2),
        "peak_rss_mb": round(e2e.peak_rss_mb, 1),
        "e2e_cpu_s": e2e.cpu,  # by process group, and the machine's busy/idle/other-processes share
        "broker": broker,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small fleet, under a minute")
    parser.add_argument("--devices", type=int, help="default 10,000 (--quick: 2,000)")
    parser.add_argument("--messages", type=int, help="messages per device (default 10, --quick 5)")
    parser.add_argument("--samples", type=int, default=5, help="samples per message")
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument(
        "--naive-messages", type=int, help="messages of each naive run (default 20,000, --quick 4,000)"
    )
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument(
        "--publisher",
        choices=("raw", "paho"),
        default="raw",
        help="raw: a minimal MQTT client writing pre-encoded packets (the default: the least CPU taken from"
        " the system under test); paho: paho-mqtt's client",
    )
    parser.add_argument("--stall", type=float, default=20.0, help="give up after no commit for this long, s")
    parser.add_argument("--broker", choices=("own", "system"), default="own")
    parser.add_argument(
        "--encoding",
        choices=[e.value for e in TelemetryEncoding],
        default=TelemetryEncoding.BINARY.value,
        help="telemetry payloads of the fleet (default binary, the encoding for high-volume publishers;"
        " the e2e phase is then repeated with JSON, the gateway's default, unless --no-json)",
    )
    parser.add_argument("--no-json", action="store_true", help="skip the JSON e2e phase")
    parser.add_argument("--rollup-interval", type=float, help="ingest.rollup_interval_s (default: ingest's)")
    parser.add_argument("--batch-rows", type=int, help="ingest.batch_max_rows (default: ingest's)")
    args = parser.parse_args()
    args.devices = args.devices or (2_000 if args.quick else 10_000)
    args.messages = args.messages or (5 if args.quick else 10)
    args.naive_messages = args.naive_messages or (4_000 if args.quick else 20_000)
    return args


def run(args: argparse.Namespace, broker: Broker, workdir: Path) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    plan = Plan(
        args.devices,
        args.sites,
        args.messages,
        args.samples,
        1.0,
        now - timedelta(hours=1),
        encoding=args.encoding,
    )
    name = f"own mosquitto :{broker.port} (max_queued_messages 0)" if broker.pid else "system mosquitto :1883"
    dsn = asyncio.run(create_database(run_id))
    try:
        asyncio.run(register_fleet(dsn, plan))
        e2e = run_e2e(broker, dsn, plan, run_id, args)
        print_e2e(plan, e2e, name)  # each phase's figures as soon as it is over
        raw = run_raw_copy(dsn, workdir)
        print_raw(raw)
        # The same fleet publishing JSON (the gateway's default encoding): what the encoding buys.
        plan = replace(plan, encoding=TelemetryEncoding.JSON)
        e2e_json = None
        if args.encoding != TelemetryEncoding.JSON and not args.no_json:
            e2e_json = run_e2e(broker, dsn, plan, f"{run_id}-j", args)
            print_e2e(plan, e2e_json, name)
        # The hobby design speaks JSON (and a denser encoding would not help it: it waits on its INSERTs).
        naive = run_naive(broker, dsn, naive_plan(plan, args.naive_messages, one_reading=True), run_id, args)
        print_naive(naive, "hobby design: one reading per message, one INSERT per message, autocommit")
        batched = run_naive(broker, dsn, naive_plan(plan, args.naive_messages), f"{run_id}-b", args)
        print_naive(batched, "secondary: batched messages, one INSERT per 50-reading message, autocommit")
    finally:
        drop_database(dsn)
    for line in broker.dropped_notices()[:5]:
        print(f"broker: {line}")
    summary = summarize(plan, e2e, raw, naive, batched, name) | {"encoding": args.encoding}
    if e2e_json is not None:
        ratio = e2e_json.per_s / raw.per_s if raw.per_s else 0.0
        print(f"with JSON payloads: e2e {e2e_json.per_s:,.0f} readings/s, e2e/raw {ratio:.2f}")
        summary |= {
            "e2e_json_per_s": round(e2e_json.per_s),
            "ratio_raw_json": round(ratio, 3),
            "json_lost": e2e_json.published - e2e_json.committed,
            "json_cpu_s_per_m_readings": round(cpu_per_million(e2e_json), 2),
        }
    return summary


def main() -> None:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="lishui-bench-"))
    os.chmod(workdir, 0o755)
    try:
        with contextlib.ExitStack() as stack:
            if args.broker == "own":
                broker = stack.enter_context(own_broker(workdir))
            else:
                broker = Broker("127.0.0.1", 1883)
            summary = run(args, broker, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary))
    if summary["lost"] or summary["naive_lost"] or summary["naive_batched_lost"] or summary.get("json_lost"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
