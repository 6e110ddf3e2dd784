"""OCPP benchmark: N simulated piles against Lishui's central system and a bare stock OCPP server.

The piles (simulators.ocpp) run in load-generator processes of their own, against the Lishui central
system and against a bare server on the stock ``ocpp`` library + ``websockets`` (no persistence, no
routing, schema validation on, the libraries' defaults), each server in its own process.

    .venv/bin/python bench/ocpp.py            # 10,000 piles
    .venv/bin/python bench/ocpp.py --quick    # 1,000 piles, under a minute

Two phases per server, with the same piles (half OCPP 1.6J, half 2.0.1):
- realistic: a heartbeat every 5 min and meter values every minute per pile, in real time (no time
  compression; first heartbeats and meter values at random phases, as in a fleet that booted at
  different times), measured over a window after every pile is connected and accepted;
- saturation: every pile sends Heartbeat / MeterValues back to back (the next as soon as the answer
  arrives) for a bounded time.
Both servers keep their websocket pings on: Lishui the service's (every 60 s; ``--ping``), the bare
server websockets' default (every 20 s).
Latency is pile-side, request frame sent -> CALLRESULT received. The piles are spread over
``--gen-procs`` generator processes (default one per 2,500 piles), which start each phase at the same
monotonic instant: a generator's own event-loop lag would count as latency, so each process's loop lag
and GC pauses are measured (``gen_watch``), and the server processes' too (``server_watch``), over the
realistic window. ``BENCH_TRACE=dir`` writes every call's send time and latency and every process's
stalls there, to line the slow calls up with their cause. ``server_cpu_ms_per_msg`` is the server
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
PILES_PER_GEN = 2_500  # piles per load-generator process by default
SITE = "bench-ocpp-site"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Watch:
    """Event-loop lag and cyclic-GC pauses of one process, on ``time.perf_counter`` (CLOCK_MONOTONIC,
    shared by every process), so a slow call can be lined up with a stall of the server or the piles."""

    def __init__(self, tick_s: float = 0.005) -> None:
        self.tick_s = tick_s
        self.lags: list[tuple[float, float]] = []  # (due, lag s) of every tick
        # (start, pause s, generation, CPU s) of collections of generation >= 1 or longer than 1 ms
        self.gcs: list[tuple[float, float, int, float]] = []
        self._gc_t0 = self._gc_cpu0 = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_t0 = now
            self._gc_cpu0 = time.thread_time()
        elif info["generation"] > 0 or now - self._gc_t0 > 0.001:
            # CPU time besides wall time: a pause much longer than its CPU is the process descheduled
            cpu = time.thread_time() - self._gc_cpu0
            self.gcs.append((self._gc_t0, now - self._gc_t0, info["generation"], cpu))

    async def run(self) -> None:
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                due = time.perf_counter() + self.tick_s
                await asyncio.sleep(self.tick_s)
                self.lags.append((due, time.perf_counter() - due))
        finally:
            gc.callbacks.remove(self._on_gc)

    def raw(self) -> dict[str, Any]:
        return {"tick_s": self.tick_s, "lags": self.lags, "gcs": self.gcs}


def watch_summary(raw: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """Loop lag and GC pauses of a ``Watch.raw()`` between ``t0`` and ``t1``."""
    lags = sorted(lag for due, lag in raw["lags"] if t0 <= due <= t1)
    gcs = [(pause, gen) for start, pause, gen, _ in raw["gcs"] if t0 <= start <= t1]
    full = [p for p, g in gcs if g == 2]
    return {
        "lag_p99_ms": _pct(lags, 0.99),
        "lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
        "stalls_over_20ms": sum(1 for x in lags if x > 0.02),
        "gc_pauses": len(gcs),
        "gc_full": len(full),
        "gc_max_ms": round(max((p for p, _ in gcs), default=0.0) * 1000, 1),
    }


def _trace(name: str, data: dict[str, Any]) -> None:
    """With BENCH_TRACE=dir, a run's raw figures (every call's send time and latency, every process's
    loop lags and GC pauses) go to dir/name.json for offline analysis."""
    where = os.environ.get("BENCH_TRACE")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.json").write_text(json.dumps(data))


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
        watch = Watch()
        watching = asyncio.create_task(watch.run())
        async with serve(
            handler,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
            backlog=4096,
        ) as server:
            ready.put(next(iter(server.sockets)).getsockname()[1])
            await stop.wait()
        watching.cancel()
        ready.put(watch.raw())

    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    asyncio.run(main())


# -- the Lishui server ----------------------------------------------------------------------------


def _lishui_server(
    pipe: Connection,
    ready: Any,
    pile_ids: list[str],
    ping_interval_s: float | None,
    port: int = 0,
    setup: bool = True,
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
        from core.charging import registry as piles
        from core.charging.passwords import hash_password
        from core.settings import DatabaseSettings, Settings
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
        cfg = ocpp_settings(
            settings, heartbeat_interval_s=300, ping_interval_s=ping_interval_s, reuse_port=port != 0
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(pipe.fileno(), stop.set)
        task = asyncio.create_task(
            run_ocpp_server(settings, "127.0.0.1", port, ocpp=cfg, on_listening=ready.put)
        )
        waiter = asyncio.create_task(stop.wait())
        watch = Watch()
        watching = asyncio.create_task(watch.run())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        watching.cancel()
        ready.put(watch.raw())
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
        from core.charging import registry  # noqa: F401
        from ocpp_server import service  # noqa: F401
    except Exception as e:
        return f"ocpp_server.service not importable ({type(e).__name__}: {e})"
    return None


# -- the load generator ---------------------------------------------------------------------------


def _generator(cfg: dict[str, Any], url: str, part: int, ctl: Connection, out: Any) -> None:
    """Child process: piles ``part::gen_procs`` of the fleet. Reports ("ready", ...) once its piles are
    connected, accepted and have reported their connectors, then runs the phases at the monotonic
    times the parent sends (the same for every generator process), and reports ("done", ...)."""
    raise_fd_limit(65_536)
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)
    logging.getLogger("simulators.ocpp").setLevel(logging.ERROR)
    try:
        asyncio.run(_generate(cfg, url, part, ctl, out))
    except Exception as e:
        out.put(("error", part, f"{type(e).__name__}: {e}"))


def _pct(xs: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``xs`` (seconds), in ms."""
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.perf_counter()))


async def _generate(cfg: dict[str, Any], url: str, part: int, ctl: Connection, out: Any) -> None:
    specs = generate_piles(
        cfg["piles"], prefix="bench-cp", password=PASSWORD, fast_share=0, connectors=1, arrivals_per_day=0,
        idle_meter_values=True, stagger=True, meter_interval_s=60,
    )[part :: cfg["gen_procs"]]  # fmt: skip
    stats = FleetStats()
    watch = Watch()
    watching = asyncio.create_task(watch.run())
    loop = asyncio.get_running_loop()
    schedule: asyncio.Future[dict[str, float]] = loop.create_future()

    def _on_schedule() -> None:
        if not schedule.done():
            schedule.set_result(ctl.recv())

    loop.add_reader(ctl.fileno(), _on_schedule)
    t0 = time.perf_counter()
    rate = cfg["connect_rate"] / cfg["gen_procs"]
    async with run_piles(specs, url, clock=SimClock(1.0), stats=stats, connect_rate=rate) as fleet:
        # Connected, accepted, and every connector reported (the boots' StatusNotifications drained).
        with suppress(TimeoutError):
            async with asyncio.timeout(cfg["connect_timeout"]):
                while not all(p.accepted and all(c.reported for c in p.connectors) for p in fleet):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        # The fleet is built: keep its objects out of the cyclic collector's full passes, which would
        # otherwise stall this process (and so every latency measured in it) with thousands of piles.
        gc.collect()
        gc.freeze()
        out.put(("ready", part, {"accepted": fleet.accepted, "connect_s": time.perf_counter() - t0}))
        at = await schedule
        res: dict[str, Any] = {}
        # realistic: heartbeats and meter values on the piles' own (jittered) timers
        await _sleep_until(at["realistic"])
        stats.clear()
        stats.recording = True
        s0, c0 = stats.sent, time.process_time()
        await _sleep_until(at["realistic"] + at["window"])
        stats.recording = False
        res["realistic"] = {
            "sent": stats.sent - s0,
            "lat": list(stats.latencies),
            "sent_at": list(stats.sent_at),
            "cpu_s": time.process_time() - c0,
            "online_at_end": fleet.online,
        }
        # saturation: every pile back to back
        await _sleep_until(at["saturation"])
        stats.clear()
        stats.recording = True
        c0 = time.process_time()
        done = await fleet.saturate(at["saturate"])
        stats.recording = False
        res["saturation"] = {
            "done": done,
            "lat": list(stats.latencies),
            "cpu_s": time.process_time() - c0,
            "wall_s": time.perf_counter() - at["saturation"],
        }
    watching.cancel()
    res["watch"] = watch.raw()
    out.put(("done", part, res))


# -- orchestration --------------------------------------------------------------------------------


def _phases(
    parts: list[dict[str, Any]], servers: list[dict[str, Any]], at: dict[str, float]
) -> dict[str, Any]:
    """The generators' raw figures merged into the result of one run."""
    r0, r1 = at["realistic"], at["realistic"] + at["window"]
    lat = [x for p in parts for x in p["realistic"]["lat"]]
    realistic = {
        "msgs_per_s": round(sum(p["realistic"]["sent"] for p in parts) / at["window"], 1),
        "answered": len(lat),
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "max_ms": _pct(lat, 1.0),
        "gen_cpu_pct": round(100 * sum(p["realistic"]["cpu_s"] for p in parts) / at["window"], 1),
        "online_at_end": sum(p["realistic"]["online_at_end"] for p in parts),
        # loop lag and GC pauses of the generators (worst process) and of the server processes, over
        # the window: a stall in either shows in the latencies
        "gen_watch": _worst([watch_summary(p["watch"], r0, r1) for p in parts]),
        "server_watch": _worst([watch_summary(s, r0, r1) for s in servers]) if servers else None,
    }
    wall = max(p["saturation"]["wall_s"] for p in parts)
    done = sum(p["saturation"]["done"] for p in parts)
    sat_lat = [x for p in parts for x in p["saturation"]["lat"]]
    saturation = {
        "msgs_per_s": round(done / wall, 1),
        "p50_ms": _pct(sat_lat, 0.5),
        "p99_ms": _pct(sat_lat, 0.99),
        "gen_cpu_pct": round(100 * sum(p["saturation"]["cpu_s"] for p in parts) / wall, 1),
        "done": done,
        "wall_s": round(wall, 2),
    }
    return {"realistic": realistic, "saturation": saturation}


def _worst(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the worst of several processes' ``watch_summary``."""
    out: dict[str, Any] = {}
    for s in summaries:
        for k, v in s.items():
            out[k] = v if out.get(k) is None else (out[k] if v is None else max(out[k], v))
    return out


def run_against(
    name: str,
    server: Callable[..., None],
    server_args: tuple[Any, ...],
    cfg: dict[str, Any],
    procs: int = 1,
) -> dict[str, Any]:
    """The load against ``procs`` server processes (more than one: sharing a port with SO_REUSEPORT),
    from ``cfg["gen_procs"]`` generator processes."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    stop_r, stop_w = ctx.Pipe(duplex=False)
    servers: list[Any] = []
    gens: list[Any] = []
    ctls: list[Connection] = []
    watches: list[dict[str, Any]] = []
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
        for part in range(cfg["gen_procs"]):
            ctl_r, ctl_w = ctx.Pipe(duplex=False)
            gen = ctx.Process(
                target=_generator, args=(cfg, url, part, ctl_r, out), name=f"{name}-piles-{part}"
            )
            gen.start()
            gens.append(gen)
            ctls.append(ctl_w)
        t_server0 = _cpu_of(pids)
        limit = cfg["connect_timeout"] + 60
        accepted, connect_s = 0, 0.0
        for _ in gens:
            kind, part, got = out.get(timeout=limit)
            if kind == "error":
                return {"error": f"generator {part}: {got}"}
            accepted += got["accepted"]
            connect_s = max(connect_s, got["connect_s"])
        # Every generator starts each phase at the same instant (CLOCK_MONOTONIC is shared).
        t = time.perf_counter() + cfg["settle"]
        at = {
            "realistic": t,
            "window": cfg["window"],
            "saturation": t + cfg["window"] + 1.0,
            "saturate": cfg["saturate"],
        }
        for ctl in ctls:
            ctl.send(at)
        time.sleep(max(0.0, at["saturation"] - time.perf_counter()))
        cpu0 = _cpu_of(pids)
        parts: dict[int, dict[str, Any]] = {}
        while len(parts) < len(gens):
            kind, part, got = out.get(timeout=cfg["window"] + cfg["saturate"] + 120)
            if kind == "error":
                return {"error": f"generator {part}: {got}"}
            parts[part] = got
        server_cpu = _cpu_of(pids) - cpu0  # saturation, plus the generators' wind-down (small)
        for _ in servers:
            stop_w.send(b"x")
        for _ in servers:
            with suppress(Exception):
                watches.append(ready.get(timeout=30))
        watches = [w for w in watches if isinstance(w, dict)]
        _trace(name, {"at": at, "parts": parts, "servers": watches})
        result: dict[str, Any] = {"accepted": accepted, "connect_s": round(connect_s, 1)}
        result.update(_phases(list(parts.values()), watches, at))
        sat = result["saturation"]
        sat["server_cpu_pct"] = round(100 * server_cpu / sat["wall_s"], 1)
        sat["server_cpu_ms_per_msg"] = round(1000 * server_cpu / sat["done"], 3) if sat["done"] else None
        result["server_cpu_s"] = round(_cpu_of(pids) - t_server0, 1)
        result["server_procs"] = procs
        result["gen_procs"] = len(gens)
        return result
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        for proc in gens:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for _ in servers:
            with suppress(OSError):
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
    ap.add_argument(
        "--ping",
        type=float,
        help="Lishui's websocket ping interval, s (default: the service's; 0: none)",
    )
    ap.add_argument(
        "--gen-procs", type=int, help=f"pile generator processes (default: one per {PILES_PER_GEN:,} piles)"
    )
    args = ap.parse_args()
    piles = args.piles or (1_000 if args.quick else 10_000)
    from core.settings import OcppSettings

    ping_s = args.ping if args.ping is not None else OcppSettings().ping_interval_s
    gen_procs = args.gen_procs or max(1, -(-piles // PILES_PER_GEN))
    cfg = {
        "piles": piles,
        "gen_procs": gen_procs,
        "window": args.window or (8.0 if args.quick else 60.0),
        "saturate": args.saturate or (5.0 if args.quick else 20.0),
        "connect_rate": 2_000.0,
        "settle": float(os.environ.get("BENCH_SETTLE", "3")),
        "connect_timeout": 20.0 if args.quick else 240.0,
        "server_start_timeout": 60.0 if args.quick else 600.0,
    }
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(f"piles={piles} over {gen_procs} generator processes (fd soft limit {soft}, raised per process),"
          f" realistic window {cfg['window']} s, saturation {cfg['saturate']} s, Lishui's websocket pings"
          f" every {ping_s:g} s, {os.cpu_count()} cores",
          flush=True)  # fmt: skip
    bare: dict[str, Any] = {"skipped": True}
    if not args.lishui_only:
        bare = run_against("bare", _bare_server, (), cfg)
    print("bare stock server:", json.dumps(bare), flush=True)
    why_not = "--bare-only" if args.bare_only else lishui_available()
    lishui: dict[str, Any] | None = None
    if why_not is None:
        ids = [s.id for s in generate_piles(piles, prefix="bench-cp", fast_share=0)]
        lishui = run_against("lishui", _lishui_server, (ids, ping_s), cfg, procs=args.procs)
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
    gen_watch = real.get("gen_watch") or {}
    server_watch = real.get("server_watch") or {}
    line = {
        "piles": piles,
        "server": "lishui" if main_res is lishui else "bare",
        "server_procs": args.procs if main_res is lishui else 1,
        "gen_procs": gen_procs,
        "ping_s": ping_s if main_res is lishui else None,
        "accepted": main_res.get("accepted"),
        "msgs_per_s": real.get("msgs_per_s"),
        "p50_ms": real.get("p50_ms"),
        "p99_ms": real.get("p99_ms"),
        "gen_lag_p99_ms": gen_watch.get("lag_p99_ms"),
        "gen_lag_max_ms": gen_watch.get("lag_max_ms"),
        "server_lag_max_ms": server_watch.get("lag_max_ms"),
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
