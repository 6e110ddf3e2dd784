"""OCPP benchmark: N simulated piles (simulators.ocpp, in their own process) against the Lishui central
system and against a bare server on the stock ``ocpp`` library + ``websockets`` (no persistence, no
routing, schema validation on), each server in its own process.

    .venv/bin/python bench/ocpp.py            # 10,000 piles
    .venv/bin/python bench/ocpp.py --quick    # 1,000 piles, under a minute

Two phases per server, with the same piles (half OCPP 1.6J, half 2.0.1):
- realistic: a heartbeat every 5 min and meter values every minute per pile, in real time (no time
  compression; first heartbeats and meter values at random phases, as in a fleet that booted at
  different times), measured over a window after every pile is connected and accepted;
- saturation: every pile sends Heartbeat / MeterValues back to back (the next as soon as the answer
  arrives) for a bounded time.
Latency is pile-side, request sent -> CALLRESULT received. ``server_cpu_ms_per_msg`` is the server
processes' CPU per answered call during saturation: on a machine shared with the load generator (and
other work) it says what the server costs even when the generator, not the server, is what saturates.
``--procs N`` runs N Lishui server processes on one port (SO_REUSEPORT); msgs/s is then for all of them
together, ``server_cpu_ms_per_msg`` their sum per call. ``--lishui-only`` skips the bare server.
Ends with ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import multiprocessing as mp
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Run as a script, this file's directory comes first on sys.path, and "import ocpp" would find this very
# file instead of the library: drop it, and put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from simulators.clock import SimClock  # noqa: E402
from simulators.ocpp import FleetStats, generate_piles, raise_fd_limit, run_piles  # noqa: E402

PASSWORD = "bench-pile-password-0001"
SITE = "bench-ocpp-site"


def _now() -> str:
    return datetime.now(UTC).isoformat()


# -- the bare stock server ------------------------------------------------------------------------


def _bare_server(pipe: Connection, ready: Any) -> None:
    """Child process: the stock library's central system, Boot/Heartbeat/Status/MeterValues only."""
    raise_fd_limit(65_536)
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint as CP16
    from ocpp.v16 import call_result as r16
    from ocpp.v201 import ChargePoint as CP201
    from ocpp.v201 import call_result as r201
    from websockets.asyncio.server import ServerConnection, serve

    class Bare16(CP16):
        @on("BootNotification")
        def boot(self, **_: Any) -> Any:
            return r16.BootNotification(current_time=_now(), interval=300, status="Accepted")

        @on("Heartbeat")
        def hb(self) -> Any:
            return r16.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def st(self, **_: Any) -> Any:
            return r16.StatusNotification()

        @on("MeterValues")
        def mv(self, **_: Any) -> Any:
            return r16.MeterValues()

    class Bare201(CP201):
        @on("BootNotification")
        def boot(self, **_: Any) -> Any:
            return r201.BootNotification(current_time=_now(), interval=300, status="Accepted")

        @on("Heartbeat")
        def hb(self, **_: Any) -> Any:
            return r201.Heartbeat(current_time=_now())

        @on("StatusNotification")
        def st(self, **_: Any) -> Any:
            return r201.StatusNotification()

        @on("MeterValues")
        def mv(self, **_: Any) -> Any:
            return r201.MeterValues()

    async def handler(ws: ServerConnection) -> None:
        pid = ws.request.path.rsplit("/", 1)[-1] if ws.request else "?"
        cp = Bare16(pid, ws) if ws.subprotocol == "ocpp1.6" else Bare201(pid, ws)
        with suppress(Exception):
            await cp.start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(pipe.fileno(), stop.set)
        async with serve(
            handler,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
            backlog=4096,
        ) as server:
            ready.put(next(iter(server.sockets)).getsockname()[1])
            await stop.wait()

    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    asyncio.run(main())


# -- the Lishui server ----------------------------------------------------------------------------


def _lishui_server(
    pipe: Connection, ready: Any, pile_ids: list[str], port: int = 0, setup: bool = True
) -> None:
    """Child process: register the piles (accepted, with a password) and run ``run_ocpp_server``. With a
    ``port``, several such processes share it (SO_REUSEPORT: the kernel spreads the connections); only
    the first sets the database up."""
    raise_fd_limit(65_536)
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    logging.basicConfig(level=logging.CRITICAL)  # the server's per-handshake logs would drown the output

    async def main() -> None:
        from core import db, registry
        from core.settings import DatabaseSettings, Settings
        from ocpp_server import registry as piles
        from ocpp_server.passwords import hash_password
        from ocpp_server.service import run_ocpp_server
        from ocpp_server.settings import ocpp_settings

        base = Settings()
        dsn = db.with_database(base.db.dsn, "lishui_bench_ocpp")
        await db.ensure_database(dsn)
        await db.migrate(dsn)
        settings = base.model_copy(
            update={"db": DatabaseSettings(dsn=dsn), "topic_root": f"lishui-bench-{os.getpid()}"}
        )
        import psycopg

        if setup:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await registry.upsert_site(
                    conn, SITE, "OCPP bench site", town_key="xiaodukou", kind="charging"
                )
                existing = {r["key"] for r in await piles.list_piles(conn, site=SITE, limit=1_000_000)}
                for pid in pile_ids:
                    if pid.lower() not in existing:
                        await piles.add_pile(
                            conn,
                            pid.lower(),
                            SITE,
                            ocpp_id=pid,
                            max_power_w=7_000,
                            lifecycle="accepted",
                            connectors=2,
                        )
                # One hash for all bench piles, with cheap scrypt parameters (log2 n = 10 instead of 14): the
                # stored format carries them, so the server verifies as usual; 10,000 first logins at full
                # cost would make the connect phase alone last minutes.
                await conn.execute(
                    "UPDATE charge_points cp SET password_hash = %s FROM devices d"
                    " JOIN sites s ON s.id = d.site_id WHERE d.id = cp.device_id AND s.key = %s",
                    (hash_password(PASSWORD, log2_n=10), SITE),
                )
        cfg = ocpp_settings(settings, heartbeat_interval_s=300, ping_interval_s=0, reuse_port=port != 0)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(pipe.fileno(), stop.set)
        task = asyncio.create_task(
            run_ocpp_server(settings, "127.0.0.1", port, ocpp=cfg, on_listening=ready.put)
        )
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except Exception as e:  # reported to the parent, which prints ratio_bare: null with the reason
        ready.put(f"error: {type(e).__name__}: {e}")


def lishui_available() -> str | None:
    """None if the Lishui server can be benchmarked, else why not."""
    try:
        from ocpp_server import registry, service  # noqa: F401
    except Exception as e:
        return f"ocpp_server.service not importable ({type(e).__name__}: {e})"
    return None


# -- the load generator ---------------------------------------------------------------------------


def _generator(cfg: dict[str, Any], url: str, out: Any) -> None:
    raise_fd_limit(65_536)
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    logging.getLogger("simulators.ocpp").setLevel(logging.ERROR)
    try:
        out.put(asyncio.run(_generate(cfg, url)))
    except Exception as e:
        out.put({"error": f"{type(e).__name__}: {e}"})


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)


async def _generate(cfg: dict[str, Any], url: str) -> dict[str, Any]:
    specs = generate_piles(
        cfg["piles"], prefix="bench-cp", password=PASSWORD, fast_share=0, connectors=1, arrivals_per_day=0,
        idle_meter_values=True, stagger=True, meter_interval_s=60,
    )  # fmt: skip
    stats = FleetStats()
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    async with run_piles(
        specs, url, clock=SimClock(1.0), stats=stats, connect_rate=cfg["connect_rate"]
    ) as fleet:
        try:
            await fleet.wait_accepted(within_s=cfg["connect_timeout"])
        except TimeoutError:
            pass
        res["accepted"] = fleet.accepted
        res["connect_s"] = round(time.perf_counter() - t0, 1)
        # The fleet is built: keep its objects out of the cyclic collector's full passes, which would
        # otherwise stall this process (and so every latency measured in it) for a sizeable fraction
        # of a second with 10,000 piles.
        gc.collect()
        gc.freeze()
        # realistic
        # Let the boots' StatusNotifications drain: every connector reported, then a short pause.
        with suppress(TimeoutError):
            async with asyncio.timeout(cfg["connect_timeout"]):
                while not all(p.accepted and all(c.reported for c in p.connectors) for p in fleet):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        await asyncio.sleep(cfg["settle"])
        stats.latencies.clear()
        stats.recording = True
        s0, c0, w0 = stats.sent, time.process_time(), time.perf_counter()
        await asyncio.sleep(cfg["window"])
        wall = time.perf_counter() - w0
        lat = list(stats.latencies)
        res["realistic"] = {
            "msgs_per_s": round((stats.sent - s0) / wall, 1),
            "answered": len(lat),
            "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99),
            "gen_cpu_pct": round(100 * (time.process_time() - c0) / wall, 1),
            "online_at_end": fleet.online,
        }
        # saturation
        stats.latencies.clear()
        c0, w0 = time.process_time(), time.perf_counter()
        cpu0 = _cpu_of(cfg.get("server_pids"))
        done = await fleet.saturate(cfg["saturate"])
        wall = time.perf_counter() - w0
        server_cpu = _cpu_of(cfg.get("server_pids")) - cpu0
        lat = list(stats.latencies)
        stats.recording = False
        res["saturation"] = {
            "msgs_per_s": round(done / wall, 1),
            "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99),
            "gen_cpu_pct": round(100 * (time.process_time() - c0) / wall, 1),
            # the server processes' CPU per answered call: what the server costs, whoever saturates
            "server_cpu_pct": round(100 * server_cpu / wall, 1),
            "server_cpu_ms_per_msg": round(1000 * server_cpu / done, 3) if done else None,
        }
    return res


# -- orchestration --------------------------------------------------------------------------------


def run_against(
    name: str,
    server: Callable[..., None],
    server_args: tuple[Any, ...],
    cfg: dict[str, Any],
    procs: int = 1,
) -> dict[str, Any]:
    """The load against ``procs`` server processes (more than one: sharing a port with SO_REUSEPORT)."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    stop_r, stop_w = ctx.Pipe(duplex=False)
    servers = []
    try:
        port = _free_port() if procs > 1 else 0
        for i in range(procs):
            args = (*server_args, port, i == 0) if procs > 1 else server_args
            proc = ctx.Process(target=server, args=(stop_r, ready, *args), name=f"{name}-server-{i}")
            proc.start()
            servers.append(proc)
            got = ready.get(timeout=cfg["server_start_timeout"])
            if isinstance(got, str):
                return {"error": got}
            port = got
        pids = [p.pid for p in servers if p.pid is not None]
        url = f"ws://127.0.0.1:{port}/ocpp"
        out = ctx.Queue()
        gen = ctx.Process(
            target=_generator, args=({**cfg, "server_pids": pids}, url, out), name=f"{name}-piles"
        )
        gen.start()
        t_server0 = _cpu_of(pids)
        result: dict[str, Any] = out.get(
            timeout=cfg["connect_timeout"] + cfg["window"] + cfg["saturate"] + 120
        )
        gen.join(30)
        result["server_cpu_s"] = round(_cpu_of(pids) - t_server0, 1)
        result["server_procs"] = procs
        return result
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        for _ in servers:
            stop_w.send(b"x")
        for proc in servers:
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_of(pids: list[int] | None) -> float:
    """CPU seconds (user + system) of the processes so far."""
    total = 0.0
    for pid in pids or []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="1,000 piles, short phases (under a minute)")
    ap.add_argument("--piles", type=int)
    ap.add_argument("--window", type=float, help="realistic-rate measuring window, s")
    ap.add_argument("--saturate", type=float, help="saturation phase, s")
    ap.add_argument("--bare-only", action="store_true")
    ap.add_argument("--lishui-only", action="store_true", help="skip the bare server (ratio_bare null)")
    ap.add_argument("--procs", type=int, default=1, help="Lishui server processes sharing the port")
    args = ap.parse_args()
    piles = args.piles or (1_000 if args.quick else 10_000)
    cfg = {
        "piles": piles,
        "window": args.window or (8.0 if args.quick else 60.0),
        "saturate": args.saturate or (5.0 if args.quick else 20.0),
        "connect_rate": 2_000.0,
        "settle": float(os.environ.get("BENCH_SETTLE", "3")),
        "connect_timeout": 20.0 if args.quick else 240.0,
        "server_start_timeout": 60.0 if args.quick else 600.0,
    }
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(f"piles={piles} (fd soft limit {soft}, raised per process), realistic window {cfg['window']} s,"
          f" saturation {cfg['saturate']} s, {os.cpu_count()} cores", flush=True)  # fmt: skip
    bare: dict[str, Any] = {"skipped": True}
    if not args.lishui_only:
        bare = run_against("bare", _bare_server, (), cfg)
    print("bare stock server:", json.dumps(bare), flush=True)
    why_not = "--bare-only" if args.bare_only else lishui_available()
    lishui: dict[str, Any] | None = None
    if why_not is None:
        ids = [s.id for s in generate_piles(piles, prefix="bench-cp", fast_share=0)]
        lishui = run_against("lishui", _lishui_server, (ids,), cfg, procs=args.procs)
        print("lishui server:", json.dumps(lishui), flush=True)
        if "error" in lishui:
            why_not = f"Lishui server run failed: {lishui['error']}"
    ratio = None
    main_res = bare
    note = None
    if lishui is not None and "error" not in lishui and "saturation" in bare:
        main_res = lishui
        b, ls = bare["saturation"]["msgs_per_s"], lishui["saturation"]["msgs_per_s"]
        ratio = round(ls / b, 2) if b else None
    elif lishui is not None and "error" not in lishui:
        main_res = lishui
        note = "ratio_bare null: the bare server was skipped"
    else:
        note = f"ratio_bare null: {why_not}; figures are the bare stock server's"
        print("NOTE:", note, flush=True)
    real = main_res.get("realistic", {})
    sat = main_res.get("saturation", {})
    line = {
        "piles": piles,
        "server": "lishui" if main_res is lishui else "bare",
        "server_procs": args.procs if main_res is lishui else 1,
        "accepted": main_res.get("accepted"),
        "msgs_per_s": real.get("msgs_per_s"),
        "p50_ms": real.get("p50_ms"),
        "p99_ms": real.get("p99_ms"),
        "sat_msgs_per_s": sat.get("msgs_per_s"),
        "sat_p50_ms": sat.get("p50_ms"),
        "sat_p99_ms": sat.get("p99_ms"),
        "bare_sat_msgs_per_s": bare.get("saturation", {}).get("msgs_per_s"),
        "ratio_bare": ratio,
        "server_cpu_ms_per_msg": sat.get("server_cpu_ms_per_msg"),
        "bare_cpu_ms_per_msg": bare.get("saturation", {}).get("server_cpu_ms_per_msg"),
    }
    if note:
        line["note"] = note
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
