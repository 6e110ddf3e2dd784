"""Demand-response allocation benchmark: solve time against resource count.

    .venv/bin/python bench/dr.py [--sizes 100 1000 10000] [--repeat 5]

A synthetic county-like fleet (hydro, storage, flexible loads in tiers 0-9, EV charging sites; fixed
seed) is turned into flexibilities and allocated a peak-shaving target of 60% of its capacity.
Measured in the same run, per size (median of the repeats):

- ``lp``: ``allocate_lp`` — HiGHS through highspy's matrix API (model pass + solve + read-back);
- ``merit``: ``allocate_merit_order``, the greedy fallback (the baseline the ratio is against);
- ``naive_lp``: the same LP built resource by resource (``addVar``/``changeColCost`` per resource,
  then one ``addRow`` per class), as a modelling layer would;
- ``build``: resource models -> flexibilities -> ``FlexibilityTable`` (done once per control cycle).

Ends with ONE JSON line. ``event_to_first_command_s`` and ``tracking_error_pct`` come from a short
closed-loop run on real services (``bench/dr_closed_loop.py``: the simulated county at x60, gateway,
Mosquitto, ingest, TimescaleDB, the controller; about 70 s of wall time); ``--no-closed-loop`` skips it
(they are then null, as they are if the services are unreachable, with the reason in ``note``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import highspy
import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from core.dr.resources import (
    Direction,
    EvChargingSite,
    FlexibleLoad,
    HydroUnit,
    Resource,
    StorageUnit,
    Window,
)
from core.dr.target import Target
from dr_controller.allocation import (
    FlexibilityTable,
    allocate_lp,
    allocate_merit_order,
)

WINDOW = Window(remaining_min=60, step_min=15)


def synthetic_fleet(count: int, seed: int = 5) -> list[Resource]:
    rng = np.random.default_rng(seed)
    fleet: list[Resource] = []
    for i in range(count):
        pick = rng.random()
        if pick < 0.08:
            rated = float(rng.uniform(500, 5000))
            fleet.append(
                HydroUnit(
                    f"hydro-{i}",
                    f"site-{i}",
                    rated,
                    rated * rng.uniform(0.2, 0.8),
                    rated * rng.uniform(0.3, 0.9),
                    float(rng.uniform(0, 4000)),
                    float(rng.uniform(20, 200)),
                    cost_per_kwh=float(rng.uniform(0.2, 0.5)),
                )
            )
        elif pick < 0.2:
            rated = float(rng.uniform(100, 2000))
            fleet.append(
                StorageUnit(
                    f"bess-{i}",
                    f"site-{i}",
                    rated * 2,
                    float(rng.uniform(10, 95)),
                    float(rng.uniform(-rated, rated) / 2),
                    rated,
                    rated,
                    cost_per_kwh=float(rng.uniform(0.3, 0.8)),
                )
            )
        elif pick < 0.85:
            load = float(rng.uniform(100, 3000))
            fleet.append(
                FlexibleLoad(
                    f"load-{i}",
                    f"site-{i}",
                    int(rng.integers(0, 10)),
                    load,
                    load * rng.uniform(0.3, 0.9),
                    max_duration_min=float(rng.choice([90.0, 240.0, np.inf])),
                    cost_per_kwh=float(rng.uniform(0.5, 3)),
                )
            )
        else:
            charging = float(rng.uniform(50, 1500))
            fleet.append(
                EvChargingSite(f"ev-{i}", int(rng.integers(1, 10)), charging, charging * 0.2, charging * 1.5)
            )
    return fleet


def naive_lp(table: FlexibilityTable, target: Target) -> float:
    """The same LP added resource by resource; returns the objective (as a check against allocate_lp)."""
    ranks, quotas, _ = table.class_quotas(target.amount_kw)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    members: dict[int, list[int]] = {int(r): [] for r in ranks}
    for i in range(len(table)):
        h.addVar(float(table.lower[i]), float(table.upper[i]))
        h.changeColCost(i, float(table.cost[i]))
        members[int(table.rank[i])].append(i)
    for k, rank in enumerate(ranks):
        cols = members[int(rank)]
        h.addRow(
            float(quotas[k]), float(quotas[k]), len(cols), np.array(cols, dtype=np.int32), np.ones(len(cols))
        )
    h.run()
    return float(h.getInfo().objective_function_value)


def timed(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def closed_loop_figures(enabled: bool) -> tuple[dict[str, Any], str]:
    if not enabled:
        return {}, "closed loop skipped (--no-closed-loop)"
    # Without bench/ itself on the path (a script's own directory is): bench/ocpp.py would shadow the
    # ocpp library the simulators import.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from bench.dr_closed_loop import run_closed_loop

    try:
        return asyncio.run(
            run_closed_loop()
        ), "closed loop: county x60, 12 MW for 45 min, meter-before baseline"
    except (OSError, psycopg.Error, aiomqtt.MqttError) as err:
        return {}, f"closed loop not run: {type(err).__name__}: {err}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-closed-loop", dest="closed_loop", action="store_false")
    args = parser.parse_args()

    highspy.Highs()  # HiGHS prints its banner on first use: get it out of the table's way
    rows = []
    for n in args.sizes:
        fleet = synthetic_fleet(n)

        def build(fleet: list[Resource] = fleet) -> FlexibilityTable:
            return FlexibilityTable.from_flexibilities(
                [r.flexibility(Direction.REDUCE, WINDOW) for r in fleet]
            )

        table = build()
        target = Target.reduction(0.6 * float(table.upper.sum()))
        lp, merit = allocate_lp(table, target), allocate_merit_order(table, target)
        objective = naive_lp(table, target)
        if abs(lp.delivered_kw - merit.delivered_kw) > 1e-6 * target.amount_kw or abs(
            objective - lp.cost_per_h(table)
        ) > 1e-6 * max(1.0, objective):
            raise SystemExit(f"n={n}: LP, merit order and naive LP disagree")
        rows.append(
            {
                "n": n,
                "target_kw": target.amount_kw,
                "build_s": timed(build, args.repeat),
                "lp_s": timed(partial(allocate_lp, table, target), args.repeat),
                "merit_s": timed(partial(allocate_merit_order, table, target), args.repeat),
                "naive_lp_s": timed(partial(naive_lp, table, target), max(1, args.repeat // 2)),
            }
        )

    print(
        f"{'resources':>9} {'target MW':>9} {'build ms':>9} {'LP ms':>8} {'merit ms':>9} {'naive LP ms':>11} "
        f"{'LP/merit':>8} {'naive/LP':>8}"
    )
    for r in rows:
        print(
            f"{r['n']:>9} {r['target_kw'] / 1000:>9.1f} {r['build_s'] * 1e3:>9.2f} {r['lp_s'] * 1e3:>8.2f} "
            f"{r['merit_s'] * 1e3:>9.2f} {r['naive_lp_s'] * 1e3:>11.1f} {r['lp_s'] / r['merit_s']:>8.1f} "
            f"{r['naive_lp_s'] / r['lp_s']:>8.1f}"
        )
    print(
        "baseline: the merit-order greedy (the fallback), same run; naive LP: same model built per resource"
    )
    loop, note = closed_loop_figures(args.closed_loop)
    print(
        f"closed loop: event_to_first_command_s={loop.get('event_to_first_command_s')} "
        f"tracking_error_pct={loop.get('tracking_error_pct')} intervals={loop.get('intervals')} {note}"
    )
    summary = {
        "solve_s": {str(r["n"]): round(r["lp_s"], 6) for r in rows},
        "baseline": "merit_order_greedy",
        "baseline_s": {str(r["n"]): round(r["merit_s"], 6) for r in rows},
        "ratio_baseline": {str(r["n"]): round(r["lp_s"] / r["merit_s"], 2) for r in rows},
        "naive_lp_s": {str(r["n"]): round(r["naive_lp_s"], 6) for r in rows},
        "build_s": {str(r["n"]): round(r["build_s"], 6) for r in rows},
        "event_to_first_command_s": loop.get("event_to_first_command_s"),
        "tracking_error_pct": loop.get("tracking_error_pct"),
        "note": note,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
