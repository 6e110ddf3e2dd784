"""A streaming stack for the chaos tests, on real services: simulated devices (in the test process),
``lishui gateway`` and ``lishui ingest`` in their own OS processes, a recorder that is the ground truth,
and services of the test's own to stop and start.

Every stack has a Mosquitto of its own (``Broker``: own port, own config with the queue limits that
scripts/setup-services.sh gives the system broker, persistence in the test's directory), so restarting
it disturbs nobody else's tests. The database scenario brings a PostgreSQL cluster of its own too
(``Cluster``: initdb in a temporary directory, TimescaleDB preloaded, migrated), so stopping it for 30 s
is felt only by the test.

The recorder subscribes (not shared, QoS 1, persistent session) to the run's telemetry before anything
streams, and records every batch it is delivered: (device, seq, readings), in arrival order. After a
run, ``check`` compares it with the hypertable: every device's seqs contiguous from 0 (a gap is a lost
batch; repeats are redeliveries and must carry the same readings), the set of (device, ts, metric) in the
database equal to the recorded set, and the row count equal to the number of distinct recorded readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core import db, topics
from core.payloads import PayloadError, decode_telemetry
from gateway.config import DeviceConfig, GatewayConfig
from simulators.clock import SimClock
from simulators.fleet import generate_devices, serve_devices

NOON = datetime.fromisoformat("2026-06-21T12:00:00+08:00")
LISHUI = str(Path(sys.executable).with_name("lishui"))
PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
HOST = "127.0.0.1"

Reading = tuple[str, datetime, str]  # device, ts, metric


def require_mosquitto() -> None:
    """Skip (with the reason) where no Mosquitto binary or no ``lishui`` command is at hand."""
    if shutil.which("mosquitto") is None:
        pytest.skip("chaos tests run a Mosquitto of their own: mosquitto is not on PATH")
    if not Path(LISHUI).exists():
        pytest.skip(f"the lishui command is not installed next to {sys.executable}")


def require_postgres_binaries() -> None:
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / b).exists()]
    if missing:
        pytest.skip(
            f"the database scenario runs a PostgreSQL of its own: {', '.join(missing)} not in {PG_BIN}"
        )


async def eventually(
    check: Callable[[], Awaitable[Any] | Any], within: float, what: str, interval: float = 0.25
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(interval)


# -- services of the test's own ------------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A Mosquitto of the test's own. ``stop`` is a clean stop (SIGTERM: Mosquitto saves its sessions and
    their queued messages to the persistence file), ``start`` brings it back on the same port and file."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\n"
            # As scripts/setup-services.sh configures the system broker: persistent sessions keep their
            # QoS 1 backlog (Mosquitto's default of 1000 queued messages would drop the rest).
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 1000000\nmax_queued_bytes 1073741824\n"
            # As whoever runs the test (as root Mosquitto would otherwise switch to the mosquitto user,
            # who cannot write here).
            f"user {_username()}\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
            "log_type subscribe\nconnection_messages true\n"
        )

    async def start(self) -> None:
        """Start it unless it runs; returns once it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self._write_conf()
        self.proc = await asyncio.to_thread(
            subprocess.Popen, ["mosquitto", "-c", str(self.conf)], stderr=subprocess.DEVNULL
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"mosquitto exited with {proc.returncode}; see {self.log}")
            return _port_open(HOST, self.port)

        await eventually(up, 30, "mosquitto to listen", interval=0.05)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        proc = self.proc
        await eventually(lambda: proc.poll() is not None, 20, "mosquitto to exit", interval=0.05)

    def has_subscribed(self, client_id: str, topic_filter: str) -> bool:
        """Whether ``client_id`` subscribed to ``topic_filter`` (Mosquitto logs "<client> <qos> <filter>")."""
        if not self.log.exists():
            return False
        return any(
            line.split()[1:2] == [client_id] and line.endswith(f" {topic_filter}")
            for line in self.log.read_text(errors="replace").splitlines()
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _username() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@dataclass
class Cluster:
    """A PostgreSQL cluster of the test's own, TimescaleDB preloaded, with the migrated database
    ``lishui``. Its data directory is a temporary directory (owned by ``postgres`` when the test runs as
    root: the server refuses to run as root), removed by ``destroy``."""

    port: int = field(default_factory=free_port)
    datadir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lishui-chaos-pg-")))

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/lishui"

    def _run(self, *argv: str) -> None:
        user = "postgres" if os.geteuid() == 0 else None
        result = subprocess.run(argv, capture_output=True, text=True, check=False, user=user)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")

    async def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")
        data = str(self.datadir / "data")
        initdb = [str(PG_BIN / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        await asyncio.to_thread(self._run, *initdb, "--no-sync", "--no-instructions")
        conf = self.datadir / "data" / "postgresql.conf"
        ours = (
            f"port = {self.port}\nlisten_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{self.datadir}'\n"
            "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n"
            "shared_buffers = 32MB\nmax_connections = 40\n"
        )
        conf.write_text(conf.read_text() + ours)
        await self.start()
        await db.ensure_database(self.dsn)
        await db.migrate(self.dsn)

    async def start(self) -> None:
        """Start it unless it runs; returns once the database accepts queries (or the server its login)."""
        if not await self._accepts("postgres"):
            log = str(self.datadir / "server.log")
            await asyncio.to_thread(
                self._run, str(PG_BIN / "pg_ctl"), "-D", str(self.datadir / "data"), "-l", log, "-w", "start"
            )
        await eventually(lambda: self._accepts("postgres"), 60, "postgresql to accept connections", 0.5)

    async def stop(self) -> None:
        await asyncio.to_thread(
            self._run, str(PG_BIN / "pg_ctl"), "-D", str(self.datadir / "data"), "-m", "fast", "-w", "stop"
        )

    async def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)

    async def _accepts(self, database: str) -> bool:
        try:
            dsn = db.with_database(self.dsn, database)
            async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False


# -- the recorder -------------------------------------------------------------------------------------


@dataclass
class Recorded:
    device: str
    seq: int
    readings: frozenset[tuple[datetime, str]]


class Recorder:
    """Every telemetry batch of the run, in the order delivered (paho, MQTT v5, persistent session).

    The session starts with clean start = 0 (the root is new, so there is nothing to resume): Mosquitto
    2.0.11 does not save a session that began with clean start = 1 to its persistence file, so such a
    session, and the messages queued for it, would not survive a restart of the broker."""

    def __init__(self, root: str, port: int) -> None:
        self.batches: list[Recorded] = []
        self.undecodable = 0
        self._port = port
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connects = 0
        self._filter = topics.subscription(topics.Channel.TELEMETRY, root)
        self._root = root
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"chaos-recorder-{root}", protocol=mqtt.MQTTv5
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600  # the broker keeps our messages while we are away
        self._client.connect_async(HOST, self._port, clean_start=False, properties=props)
        self._client.loop_start()

    async def subscribed(self) -> None:
        await eventually(self._subscribed.is_set, 15, "the recorder's subscription")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, rc: Any, props: Any) -> None:
        self.connects += 1
        client.subscribe(self._filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device = topics.parse(msg.topic, self._root).device
        try:
            batch = decode_telemetry(msg.payload)  # JSON or the binary encoding, whichever was sent
        except PayloadError:
            self.undecodable += 1
            return
        readings = frozenset((s.ts, metric) for s in batch.samples for metric in s.values)
        with self._lock:
            self.batches.append(Recorded(device, batch.seq, readings))

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.batches)

    def count(self) -> int:
        with self._lock:
            return len(self.batches)


# -- processes -----------------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.starts += 1
        log = open(self.cwd / f"{self.name}.log", "ab")  # the child process writes to it
        log.write(f"--- start {self.starts} ---\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self, within: float = 30) -> int | None:
        """SIGTERM and wait (a clean stop); SIGKILL if it does not end ``within`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            await eventually(lambda: self.proc is not None and self.proc.poll() is not None, within, "")
        except AssertionError:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not stop within {within} s of SIGTERM") from None
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        path = self.cwd / f"{self.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class Stack:
    tag: str
    root: str
    dsn: str
    workdir: Path
    devices: list[str]
    broker: Broker
    recorder: Recorder
    gateway: Service
    ingest: Service
    timings: dict[str, float] = field(default_factory=dict)

    async def db_count(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=5) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.key = ANY(%s)",
                (self.devices,),
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def db_count_or_none(self) -> int | None:
        try:
            return await self.db_count()
        except psycopg.Error:
            return None

    async def db_readings(self) -> list[Reading]:
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cur = await conn.execute(
                "SELECT d.key, t.ts, m.name FROM telemetry t JOIN devices d ON d.id = t.device_id"
                " JOIN metrics m ON m.id = t.metric_id WHERE d.key = ANY(%s)",
                (self.devices,),
            )
            return [(k, ts, name) for k, ts, name in await cur.fetchall()]

    async def flowing(self, within: float = 30.0) -> None:
        """Wait until new batches reach the recorder and new rows reach the database."""
        batches0 = self.recorder.count()
        rows0 = await eventually(self.db_count_or_none, within, "the database answering", interval=0.5)
        await eventually(lambda: self.recorder.count() >= batches0 + 2 * len(self.devices), within, "batches")

        async def more_rows() -> bool:
            rows = await self.db_count_or_none()
            return rows is not None and rows > rows0

        await eventually(more_rows, within, "rows in the database", interval=0.5)


@contextlib.asynccontextmanager
async def streaming(
    tag: str,
    dsn: str,
    workdir: Path,
    *,
    devices: int = 5,
    poll_s: float = 0.25,
    shared: bool = True,
    encoding: str = "json",
    env_extra: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """A broker of the stack's own, simulators, recorder, ingest and gateway, streaming; on the way out
    everything is stopped. ``shared=False``: ingest on a plain subscription (``share_group`` empty);
    ``encoding``: the gateway's telemetry encoding; ``env_extra``: more settings for both services."""
    run = uuid.uuid4().hex[:6]
    root = f"lishui-chaos-{tag}-{run}"
    specs = generate_devices("pv_inverter", devices, prefix=f"chaos-{tag}-{run}", site=f"chaos-{tag}-{run}")
    broker = Broker(workdir / "mosquitto")
    env = {
        **os.environ,
        "LISHUI_DB__DSN": dsn,
        "LISHUI_MQTT__HOST": HOST,
        "LISHUI_MQTT__PORT": str(broker.port),
        "LISHUI_TOPIC_ROOT": root,
        "LISHUI_GATEWAY__STATE_DIR": str(workdir / "gateway-state"),
        "LISHUI_GATEWAY__MAX_BACKOFF_S": "2",
        "LISHUI_GATEWAY__TELEMETRY_ENCODING": encoding,
        "LISHUI_INGEST__SHARE_GROUP": f"chaos-{run}" if shared else "",
        "LISHUI_INGEST__CLIENT_ID": f"chaos-ingest-{root}",
        "LISHUI_INGEST__BATCH_MAX_DELAY_S": "0.3",
        "LISHUI_INGEST__ROLLUP_INTERVAL_S": "2",
        "LISHUI_LOG_LEVEL": "INFO",
        **(env_extra or {}),
    }
    await broker.start()
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(broker.kill)
        fleet = await cleanup.enter_async_context(
            serve_devices(specs, base_port=0, clock=SimClock(factor=0, start=NOON))
        )
        config = GatewayConfig(
            name=f"chaos-gw-{run}",
            devices=[
                DeviceConfig(
                    key=key,
                    site=spec.site,
                    profile=spec.profile,
                    host=ep.host,
                    port=ep.port,
                    unit_id=ep.unit_id,
                    poll_interval_s=poll_s,
                )
                for key, ep in fleet.endpoints.items()
                for spec in [fleet.specs[key]]
            ],
        )
        config_path = workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        recorder = Recorder(root, broker.port)
        stack = Stack(
            tag=tag,
            root=root,
            dsn=dsn,
            workdir=workdir,
            devices=list(fleet.endpoints),
            broker=broker,
            recorder=recorder,
            gateway=Service(
                "gateway",
                [LISHUI, "gateway", "--config", str(config_path), "--metrics-port", "0"],
                env,
                workdir,
            ),
            ingest=Service("ingest", [LISHUI, "ingest", "--metrics-port", "0"], env, workdir),
        )
        recorder.start()
        try:
            await recorder.subscribed()  # the ground truth listens before anything streams
            stack.ingest.start()
            # ... and so does ingest: a shared group's messages published before it subscribed are lost.
            client_id, telemetry = (
                env["LISHUI_INGEST__CLIENT_ID"],
                topics.subscription(topics.Channel.TELEMETRY, root),
            )
            group = env["LISHUI_INGEST__SHARE_GROUP"]
            wanted = f"$share/{group}/{telemetry}" if group else telemetry
            await eventually(lambda: broker.has_subscribed(client_id, wanted), 30, "ingest's subscription")
            stack.gateway.start()
            await stack.flowing(within=60)
            yield stack
        finally:
            for service in (stack.gateway, stack.ingest):
                with contextlib.suppress(Exception):
                    await service.stop(within=20)
            recorder.stop()


async def finish(stack: Stack, drain_within: float = 90.0) -> dict[str, int]:
    """Stop the gateway cleanly, let ingest drain, stop it; returns the counts."""
    started = time.monotonic()
    code = await stack.gateway.stop()
    assert code == 0, f"gateway exit code {code}\n{stack.gateway.log_tail()}"
    # The recorder has everything once it stops growing (the gateway flushed its spool before exiting).
    last = -1
    while (n := stack.recorder.count()) != last:
        last = n
        await asyncio.sleep(1.0)
    recorded = stack.recorder.snapshot()
    distinct = {(b.device, ts, metric) for b in recorded for ts, metric in b.readings}

    async def drained() -> bool:
        return await stack.db_count_or_none() == len(distinct)

    try:
        await eventually(drained, drain_within, "ingest to write every recorded reading", interval=0.5)
    except AssertionError as err:
        got = {(d, ts, m) for d, ts, m in await stack.db_readings()}
        lost = sorted(
            {(b.device, b.seq) for b in recorded for ts, m in b.readings if (b.device, ts, m) not in got}
        )
        raise AssertionError(
            f"{err}: {len(distinct)} recorded, {len(got)} in the database; batches missing: {lost[:30]}"
            f"\n--- ingest log ---\n{stack.ingest.log_tail(40)}"
        ) from None
    finally:
        await stack.ingest.stop()
    stack.timings["drain_s"] = round(time.monotonic() - started, 1)
    return check(stack, recorded, await stack.db_readings())


def out_of_order(recorded: list[Recorded]) -> dict[str, list[int]]:
    """Per device, the seqs whose first delivery came after that of a higher seq (empty: in order)."""
    seen: set[tuple[str, int]] = set()
    top: dict[str, int] = {}
    late: dict[str, list[int]] = {}
    for b in recorded:
        if (b.device, b.seq) in seen:
            continue  # a redelivery
        seen.add((b.device, b.seq))
        if b.seq < top.get(b.device, -1):
            late.setdefault(b.device, []).append(b.seq)
        top[b.device] = max(top.get(b.device, -1), b.seq)
    return late


def check(stack: Stack, recorded: list[Recorded], db_rows: list[Reading]) -> dict[str, int]:
    """The three promises: no batch lost, every reading in the database, none twice."""
    assert stack.recorder.undecodable == 0, "the recorder was sent payloads it could not decode"
    by_batch: dict[tuple[str, int], frozenset[tuple[datetime, str]]] = {}
    for b in recorded:
        held = by_batch.setdefault((b.device, b.seq), b.readings)
        # A redelivery repeats a batch; a seq carrying other readings would be a reused seq.
        assert held == b.readings, f"{b.device} seq {b.seq} was used for two different batches"
    for device in stack.devices:
        seqs = sorted(seq for d, seq in by_batch if d == device)
        assert seqs, f"nothing recorded for {device}"
        missing = sorted(set(range(seqs[-1] + 1)) - set(seqs))
        assert not missing, f"{device}: batches lost, seqs missing {missing[:20]} (of 0..{seqs[-1]})"
    expected = {(d, ts, metric) for (d, _), readings in by_batch.items() for ts, metric in readings}
    got = set(db_rows)
    assert len(db_rows) == len(got), "a reading is in the database twice"
    assert not expected - got, f"{len(expected - got)} recorded readings missing from the database"
    assert not got - expected, f"{len(got - expected)} readings in the database that nobody published"
    assert len(db_rows) == len(expected)
    readings_with_repeats = sum(len(b.readings) for b in recorded)
    return {
        "published_batches": len(by_batch),  # seqs 0..max per device, checked contiguous above
        "recorded_messages": len(recorded),
        "redelivered_messages": len(recorded) - len(by_batch),
        "recorded_readings": readings_with_repeats,
        "distinct_readings": len(expected),
        "db_rows": len(db_rows),
    }
