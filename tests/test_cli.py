"""The ``lishui`` command as an operator uses it: separate processes meeting on MQTT and in the database."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from core.settings import Settings

LISHUI = [sys.executable, "-m", "lishui.cli"]


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LISHUI_DB__DSN": settings.db.dsn,
        "LISHUI_TOPIC_ROOT": settings.topic_root,
        "LISHUI_GATEWAY__STATE_DIR": str(tmp_path / "gw-state"),
        "LISHUI_INGEST__SHARE_GROUP": f"cli-{tmp_path.name[-8:]}",
        "LISHUI_INGEST__CLIENT_ID": f"cli-ingest-{tmp_path.name[-8:]}",
        "LISHUI_LOG_JSON": "true",
    }


def test_migrate_is_idempotent(settings: Settings, tmp_path: Path) -> None:
    out = subprocess.run(
        [*LISHUI, "db", "migrate"],
        env=_env(settings, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "0 migration(s) applied" in out.stdout


def _wait_for(path: Path, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


def test_sim_gateway_and_ingest_processes_fill_the_database(settings: Settings, tmp_path: Path) -> None:
    env = _env(settings, tmp_path)
    started = datetime.now(UTC)
    subprocess.run([*LISHUI, "db", "seed", "default"], env=env, check=True, timeout=60, capture_output=True)
    gw_file = tmp_path / "gw.yaml"
    # Below the kernel's ephemeral range (32768-60999), where client sockets can't take our ports.
    base_port = random.randint(21000, 29000)
    procs = [
        subprocess.Popen(
            [*LISHUI, "sim", "default", "--base-port", str(base_port), "--gateway-file", str(gw_file)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    ]
    try:
        _wait_for(gw_file, 30)
        procs.append(subprocess.Popen([*LISHUI, "ingest", "--metrics-port", "0"], env=env))
        procs.append(
            subprocess.Popen([*LISHUI, "gateway", "--config", str(gw_file), "--metrics-port", "0"], env=env)
        )
        with psycopg.connect(settings.db.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 45
            while True:
                cur = conn.execute(
                    "SELECT count(DISTINCT d.key) FROM telemetry t JOIN devices d ON d.id = t.device_id"
                    " JOIN sites s ON s.id = d.site_id WHERE s.key IN ('xdk-park', 'wjc-hydro')"
                    " AND d.kind <> 'charge_point' AND t.ts > %s",
                    (started,),
                )
                row = cur.fetchone()
                if row and row[0] == 8:
                    break
                assert time.monotonic() < deadline, f"only {row} devices reported"
                time.sleep(0.5)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=20) for p in procs]
    # SIGTERM is a clean stop: every service exits 0.
    assert codes == [0, 0, 0]
    listing = procs[0].stdout.read() if procs[0].stdout else ""
    assert f"127.0.0.1:{base_port}" in listing and "xdk-pv-1" in listing


@pytest.mark.parametrize("argv", [["db"], ["gateway"], ["nonsense"]])
def test_bad_usage_is_a_clear_error(argv: list[str]) -> None:
    out = subprocess.run([*LISHUI, *argv], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "usage:" in out.stderr


@pytest.mark.parametrize("command", ["dr", "openadr"])
def test_service_subcommands_have_help(command: str) -> None:
    out = subprocess.run([*LISHUI, command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--metrics-port" in out.stdout, out.stderr


def test_dr_process_takes_the_leader_lock_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    name = f"cli-{tmp_path.name[-8:].lower().replace('_', '-')}"
    proc = subprocess.Popen(
        [*LISHUI, "dr", "--name", name, "--metrics-port", "0"], env=_env(settings, tmp_path)
    )
    try:
        with psycopg.connect(settings.db.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
                    (f"lishui-dr-{name}-lock",),
                ).fetchone()
                if row == (1,):
                    break
                assert proc.poll() is None, f"lishui dr exited with {proc.returncode}"
                assert time.monotonic() < deadline, "lishui dr never took the leader lock"
                time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0
