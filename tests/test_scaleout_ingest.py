"""Two ``lishui ingest`` processes on one shared subscription split the stream and write every reading
once, even when the same message reaches both (a redelivery, or a gateway replaying its spool)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest

from core.payloads import Sample, TelemetryBatch, encode_telemetry
from core.settings import Settings
from core.topics import Channel, topic

LISHUI = [sys.executable, "-m", "lishui.cli"]
pytestmark = pytest.mark.timeout(180)

DEVICES, BATCHES, SAMPLES = 4, 60, 5  # 4 x 60 messages of 5 samples x 2 metrics


def _messages_received(port: int) -> float:
    """``lishui_ingest_messages_total{channel="telemetry"}`` from one process's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lishui_ingest_messages_total{") and 'channel="telemetry"' in line
    )


def _count(dsn: str, devices: list[str]) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE d.key = ANY(%s)",
            (devices,),
        ).fetchone()
    return int(row[0]) if row else 0


def _wait(predicate: object, within_s: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _port_answers(port: int) -> bool:
    try:
        _messages_received(port)
    except OSError:
        return False
    return True


def test_two_ingest_processes_share_the_stream_and_write_each_reading_once(
    settings: Settings, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    group = f"scale-{tag}"
    # Below the kernel's ephemeral range, where client sockets can't take our ports.
    ports = random.sample(range(21000, 29000), 2)
    procs = [
        subprocess.Popen(
            [*LISHUI, "ingest", "--metrics-port", str(port)],
            env={
                **os.environ,
                "LISHUI_DB__DSN": settings.db.dsn,
                "LISHUI_TOPIC_ROOT": settings.topic_root,
                "LISHUI_INGEST__SHARE_GROUP": group,
                "LISHUI_INGEST__CLIENT_ID": f"{group}-{i}",
                "LISHUI_INGEST__BATCH_MAX_DELAY_S": "0.1",
                "LISHUI_LOG_JSON": "true",
            },
        )
        for i, port in enumerate(ports)
    ]
    site = f"site-{tag}"
    devices = [f"meter-{tag}-{i}" for i in range(DEVICES)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{tag}")
    try:
        for port in ports:
            _wait(lambda port=port: _port_answers(port), 30, f"ingest metrics on :{port}")
        time.sleep(1.0)  # both have subscribed once their sessions are up (no retained telemetry to wait on)
        pub.connect(settings.mqtt.host, settings.mqtt.port)
        pub.loop_start()
        infos = []
        for b in range(BATCHES):
            for d, device in enumerate(devices):
                batch = TelemetryBatch(
                    seq=b,
                    samples=[
                        Sample(
                            ts=start + timedelta(seconds=b * SAMPLES + s),
                            values={"active_power_w": float(d * 1000 + b), "voltage_v": 230.0 + s},
                        )
                        for s in range(SAMPLES)
                    ],
                )
                payload = encode_telemetry(batch, "binary" if b % 2 else "json")
                t = topic(site, device, Channel.TELEMETRY, root=settings.topic_root)
                # Every message twice: round robin hands the copies to different processes at once.
                infos += [pub.publish(t, payload, qos=1), pub.publish(t, payload, qos=1)]
        for info in infos:
            info.wait_for_publish(timeout=30)
        expected = DEVICES * BATCHES * SAMPLES * 2
        _wait(lambda: _count(settings.db.dsn, devices) >= expected, 60, f"{expected} readings")
        time.sleep(1.0)  # late duplicates would land now
        assert _count(settings.db.dsn, devices) == expected
        received = [_messages_received(port) for port in ports]
        assert sum(received) >= 2 * DEVICES * BATCHES and all(r > 0 for r in received), received
    finally:
        pub.loop_stop()
        pub.disconnect()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
        for i in range(len(procs)):  # forget the persistent sessions
            forget = paho.Client(
                paho.CallbackAPIVersion.VERSION2, client_id=f"{group}-{i}", clean_session=True
            )
            forget.connect(settings.mqtt.host, settings.mqtt.port)
            forget.disconnect()
    assert codes == [0, 0]
