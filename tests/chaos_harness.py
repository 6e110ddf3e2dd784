"""A streaming stack for the chaos tests, on real services: simulated devices (in the test process),
``lishui gateway`` and ``lishui ingest`` in their own OS processes, a recorder that is the ground truth,
and helpers that stop and start Mosquitto and PostgreSQL.

The recorder subscribes (not shared, QoS 1, persistent session) to the run's telemetry before anything
streams, and records every batch it is delivered: (device, seq, readings). After a run, ``check``
compares it with the hypertable: every device's seqs contiguous from 0 (a gap is a lost batch; repeats
are redeliveries and must carry the same readings), the set of (device, ts, metric) in the database equal
to the recorded set, and the row count equal to the number of distinct recorded readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
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

from core import topics
from gateway.config import DeviceConfig, GatewayConfig
from simulators.clock import SimClock
from simulators.fleet import generate_devices, serve_devices

NOON = datetime.fromisoformat("2026-06-21T12:00:00+08:00")
LISHUI = str(Path(sys.executable).with_name("lishui"))
MOSQUITTO_CONF = "/etc/mosquitto/mosquitto.conf"
MOSQUITTO_PID = Path("/run/mosquitto/mosquitto.pid")
PG_VERSION, PG_CLUSTER = "15", "main"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883

Reading = tuple[str, datetime, str]  # device, ts, metric


def require_services() -> None:
    """Skip (with the reason) where the services cannot be stopped and started from here."""
    if os.geteuid() != 0:
        pytest.skip("chaos tests stop and start Mosquitto and PostgreSQL: they need root")
    missing = [c for c in ("mosquitto", "pg_ctlcluster", "pgrep") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"chaos tests need {', '.join(missing)} on PATH")
    if not Path(LISHUI).exists():
        pytest.skip(f"the lishui command is not installed next to {sys.executable}")


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


# -- services ---------------------------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def mosquitto_pid() -> int | None:
    """The system broker's pid: from its pid file, else the ``mosquitto`` process started with its
    config (other people's brokers on other ports are left alone)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(MOSQUITTO_PID.read_text().strip())
        if _alive(pid) and _is_system_broker(pid):
            return pid
    out = subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True, text=True, check=False)
    pids = [int(p) for p in out.stdout.split() if _is_system_broker(int(p))]
    return pids[0] if pids else None


def _is_system_broker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and Path(argv[0].decode()).name == "mosquitto" and MOSQUITTO_CONF.encode() in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def stop_mosquitto() -> None:
    pid = mosquitto_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)  # a clean stop: Mosquitto saves sessions and queued messages
    await eventually(lambda: not _alive(pid), 20, "mosquitto to exit")


async def start_mosquitto() -> None:
    """Start Mosquitto unless it runs; returns once it accepts connections."""
    if mosquitto_pid() is None:
        await asyncio.to_thread(subprocess.run, ["mosquitto", "-d", "-c", MOSQUITTO_CONF], check=True)
    await eventually(lambda: _port_open(MQTT_HOST, MQTT_PORT), 30, "mosquitto to listen")


async def _pg_ctl(action: str, *extra: str) -> None:
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, PG_CLUSTER, action, *extra]
    result = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 and "already running" not in result.stderr + result.stdout:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")


async def stop_postgres() -> None:
    await _pg_ctl("stop", "-m", "fast")


async def start_postgres(dsn: str) -> None:
    """Start the cluster unless it runs; returns once ``dsn`` accepts queries."""

    async def accepts() -> bool:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    if not await accepts():
        await _pg_ctl("start")
    await eventually(accepts, 60, "postgresql to accept connections", interval=0.5)


# -- the recorder -------------------------------------------------------------------------------------


@dataclass
class Recorded:
    device: str
    seq: int
    readings: frozenset[tuple[datetime, str]]


class Recorder:
    """Every telemetry batch of the run, as delivered (paho, MQTT v5, persistent session)."""

    def __init__(self, root: str) -> None:
        self.batches: list[Recorded] = []
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
        self._client.connect_async(
            MQTT_HOST, MQTT_PORT, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=props
        )
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
        data = json.loads(msg.payload)
        readings = frozenset(
            (datetime.fromisoformat(s["ts"]), metric) for s in data["samples"] for metric in s["values"]
        )
        with self._lock:
            self.batches.append(Recorded(device, data["seq"], readings))

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
    tag: str, dsn: str, workdir: Path, *, devices: int = 5, poll_s: float = 0.25
) -> AsyncIterator[Stack]:
    """Simulators, recorder, ingest and gateway, streaming; on the way out everything is stopped."""
    run = uuid.uuid4().hex[:6]
    root = f"lishui-chaos-{tag}-{run}"
    specs = generate_devices("pv_inverter", devices, prefix=f"chaos-{tag}-{run}", site=f"chaos-{tag}-{run}")
    env = {
        **os.environ,
        "LISHUI_DB__DSN": dsn,
        "LISHUI_TOPIC_ROOT": root,
        "LISHUI_GATEWAY__STATE_DIR": str(workdir / "gateway-state"),
        "LISHUI_GATEWAY__MAX_BACKOFF_S": "2",
        "LISHUI_INGEST__SHARE_GROUP": f"chaos-{run}",
        "LISHUI_INGEST__CLIENT_ID": f"chaos-ingest-{root}",
        "LISHUI_INGEST__BATCH_MAX_DELAY_S": "0.3",
        "LISHUI_INGEST__ROLLUP_INTERVAL_S": "2",
        "LISHUI_LOG_LEVEL": "INFO",
    }
    async with serve_devices(specs, base_port=0, clock=SimClock(factor=0, start=NOON)) as fleet:
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
        recorder = Recorder(root)
        stack = Stack(
            tag=tag,
            root=root,
            dsn=dsn,
            workdir=workdir,
            devices=list(fleet.endpoints),
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


def check(stack: Stack, recorded: list[Recorded], db_rows: list[Reading]) -> dict[str, int]:
    """The three promises: no batch lost, every reading in the database, none twice."""
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
