"""Gateway benchmark: N SunSpec PV inverters (simulated in a separate process) polled at 1 s by one
gateway process publishing to the real Mosquitto, against a naive sequential poller as baseline.

    python -m bench.gateway --devices 500 --seconds 30

Prints a summary and ends with ONE JSON line: devices, polls_per_s, late_polls_pct, p50/p99 latency,
cpu_pct, ratio_naive (gateway polls/s over the naive poller's polls/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import statistics
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from core import sunspec
from core.settings import GatewaySettings, Settings
from gateway import metrics
from gateway.config import DeviceConfig, GatewayConfig
from gateway.modbus import ModbusConnection
from gateway.profile import load
from gateway.service import Gateway
from simulators.fleet import serve_devices

PROFILE = "sunspec-pv-inverter"
Endpoint = tuple[str, int, int]


# -- the simulator process ------------------------------------------------------------------------


def _simulate(count: int, pipe: Connection) -> None:
    """Child process: serve ``count`` PV inverters, send their endpoints, run until told to stop."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_serve(count, pipe))


async def _serve(count: int, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(pipe.fileno(), stop.set)
    async with serve_devices([("pv_inverter", count)], base_port=0) as fleet:
        pipe.send(sorted(fleet.endpoints.values()))
        await stop.wait()


# -- the naive baseline ---------------------------------------------------------------------------


async def naive_polls_per_s(endpoints: list[Endpoint], seconds: float, timeout_s: float) -> float:
    """The common hobby design: one loop visiting every device in turn, one request per point (and per
    scale factor), no coalescing. Connections are kept open (it is not *that* naive)."""
    profile = load(PROFILE)
    assert profile.sunspec is not None
    conns = [ModbusConnection(h, p, u, timeout_s) for h, p, u in endpoints]
    for conn in conns:
        await conn.connect()
    bases = await _model_bases(conns[0])
    requests: list[tuple[int, int]] = []
    for mapping in profile.sunspec.points:
        model = sunspec.model(mapping.model_id)
        point = model.points[mapping.point_name]
        requests.append((bases[mapping.model_id] + point.offset, point.size))
        if isinstance(point.sf, str):
            requests.append((bases[mapping.model_id] + model.points[point.sf].offset, 1))
    polls = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            for conn in conns:
                for address, count in requests:
                    await conn.read("holding", address, count)
                polls += 1
                if time.perf_counter() - start >= seconds:
                    break
    finally:
        for conn in conns:
            conn.close()
    return polls / (time.perf_counter() - start)


async def _model_bases(conn: ModbusConnection) -> dict[int, int]:
    address, bases = 40002, dict[int, int]()
    while True:
        model_id, length = await conn.read("holding", address, 2)
        if model_id == sunspec.END_MODEL_ID:
            return bases
        bases[model_id] = address
        address += 2 + length


# -- the gateway run ------------------------------------------------------------------------------


class LatencyRecorder:
    def __init__(self, observe: Callable[[float], None]) -> None:
        self.samples: list[float] = []
        self._observe = observe

    def observe(self, value: float) -> None:
        self.samples.append(value)
        self._observe(value)


async def run_gateway_for(
    endpoints: list[Endpoint], seconds: float, warmup_s: float, timeout_s: float
) -> dict[str, Any]:
    settings = Settings(
        topic_root=f"lishui-bench-{uuid.uuid4().hex[:8]}",
        gateway=GatewaySettings(request_timeout_s=timeout_s),
        _env_file=None,
    )
    devices = [
        DeviceConfig(
            key=f"pv{i:04d}", site="bench", profile=PROFILE, host=h, port=p, unit_id=u, poll_interval_s=1.0
        )
        for i, (h, p, u) in enumerate(endpoints)
    ]
    gateway = Gateway(settings, GatewayConfig(name="bench", devices=devices))
    recorder = LatencyRecorder(metrics.POLL_LATENCY.observe)
    metrics.POLL_LATENCY = recorder  # type: ignore[assignment]
    task = asyncio.create_task(gateway.run())
    tasks = list(gateway.devices.values())
    try:
        await asyncio.sleep(warmup_s)  # connect, discover, settle
        polls0 = sum(t.stats.polls for t in tasks)
        late0 = sum(t.stats.late for t in tasks)
        errors0 = sum(t.stats.errors for t in tasks)
        recorder.samples.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        max_queue = 0
        while time.perf_counter() - wall0 < seconds:
            await asyncio.sleep(0.5)
            max_queue = max(max_queue, len(gateway.outbox))
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        polls = sum(t.stats.polls for t in tasks) - polls0
        late = sum(t.stats.late for t in tasks) - late0
        errors = sum(t.stats.errors for t in tasks) - errors0
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    lat = sorted(recorder.samples) or [0.0]
    return {
        "polls_per_s": polls / wall,
        "late_polls_pct": 100.0 * late / max(polls + late, 1),
        "poll_errors": errors,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "cpu_pct": 100.0 * cpu / wall,
        "max_publish_queue": max_queue,
        "online": sum(1 for t in tasks if t.state is not None and t.state.value == "online"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--naive-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=1.0, help="per-request timeout, s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    parent, child = mp.get_context("spawn").Pipe()
    simulator = mp.get_context("spawn").Process(target=_simulate, args=(args.devices, child), daemon=True)
    simulator.start()
    child.close()  # so a simulator that dies shows up as EOF here instead of a hang
    try:
        if not parent.poll(120):
            raise SystemExit("the simulator process did not start its devices within 120 s")
        raw = parent.recv()
        endpoints: list[Endpoint] = [tuple(e) for e in raw]
        naive = asyncio.run(naive_polls_per_s(endpoints, args.naive_seconds, args.timeout))
        result = asyncio.run(run_gateway_for(endpoints, args.seconds, args.warmup, args.timeout))
    finally:
        if simulator.is_alive():
            parent.send("stop")
        simulator.join(10)
        if simulator.is_alive():
            simulator.terminate()
    ratio = result["polls_per_s"] / naive if naive else float("inf")
    print(f"simulators.fleet: {len(endpoints)} devices, 1 s poll interval, {args.seconds:g} s measured")
    print(
        f"gateway: {result['polls_per_s']:.1f} polls/s, late {result['late_polls_pct']:.2f} %, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"CPU {result['cpu_pct']:.0f} % of a core, errors {result['poll_errors']}, "
        f"online {result['online']}, max publish queue {result['max_publish_queue']}"
    )
    print(f"naive sequential poller: {naive:.1f} polls/s -> ratio {ratio:.1f}x")
    summary = {
        "devices": len(endpoints),
        "polls_per_s": round(result["polls_per_s"], 1),
        "late_polls_pct": round(result["late_polls_pct"], 3),
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "cpu_pct": round(result["cpu_pct"], 1),
        "naive_polls_per_s": round(naive, 1),
        "ratio_naive": round(ratio, 2),
        "poll_errors": result["poll_errors"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
