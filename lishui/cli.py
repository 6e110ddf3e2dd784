"""The ``lishui`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from core import db
from core.service import run, setup_logging, start_metrics_endpoint
from core.settings import Settings, get_settings
from ocpp_server import cli as ocpp_cli

log = logging.getLogger("lishui")


def _migrate(settings: Settings) -> int:
    async def go() -> None:
        created = await db.ensure_database(settings.db.dsn)
        applied = await db.migrate(settings.db.dsn)
        where = settings.db.dsn.rsplit("/", 1)[-1]
        print(
            f"database {where}: {'created, ' if created else ''}"
            f"{len(applied)} migration(s) applied{': ' + ', '.join(applied) if applied else ''}"
        )

    asyncio.run(go())
    return 0


def _seed(settings: Settings, scenario_name: str) -> int:
    from lishui.composition import seed_registry
    from simulators.scenario import load_scenario

    scenario = load_scenario(scenario_name)
    counts = asyncio.run(seed_registry(settings, scenario))
    print(f"scenario {scenario.name}: {counts}")
    return 0


def _sim(settings: Settings, args: argparse.Namespace) -> int:
    from lishui.composition import run_simulators

    return run(
        lambda: run_simulators(args.scenario, args.host, args.base_port, args.time_factor, args.gateway_file)
    )


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig
    from gateway.service import run_gateway

    config = GatewayConfig.from_yaml(args.config)
    start_metrics_endpoint(args.metrics_port)
    return run(lambda: run_gateway(settings, config))


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.service import run_ingest

    start_metrics_endpoint(args.metrics_port)
    return run(lambda: run_ingest(settings))


def _dr(settings: Settings, args: argparse.Namespace) -> int:
    from dr_controller.service import run_dr_controller

    start_metrics_endpoint(args.metrics_port)
    return run(lambda: run_dr_controller(settings, name=args.name))


def _openadr(settings: Settings, args: argparse.Namespace) -> int:
    from dr_controller.openadr import run_ven

    start_metrics_endpoint(args.metrics_port)
    return run(lambda: run_ven(settings))


def _api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.api.host,
        port=args.port or settings.api.port,
        log_config=None,
    )
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from lishui.demo import run_demo

    return run(lambda: run_demo(settings, "county" if args.county else args.scenario, args.time_factor))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lishui", description="Lishui energy-management and EV-charging backend"
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING (default from LISHUI_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dbp = sub.add_parser("db", help="database maintenance")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("migrate", help="create the database if missing and apply pending migrations")
    seed = dbsub.add_parser("seed", help="register a scenario's tenants, sites and devices")
    seed.add_argument("scenario", nargs="?", default="default")

    sim = sub.add_parser("sim", help="run a scenario's Modbus simulators alone and print their addresses")
    sim.add_argument("scenario", nargs="?", default="default")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--base-port", type=int, default=15020)
    sim.add_argument("--time-factor", type=float, default=None, help="simulated seconds per real second")
    sim.add_argument("--gateway-file", default=None, help="also write a gateway YAML polling these devices")

    gw = sub.add_parser("gateway", help="poll Modbus devices and publish telemetry")
    gw.add_argument("--config", required=True, help="gateway YAML: name and devices")
    gw.add_argument("--metrics-port", type=int, default=9101)

    ing = sub.add_parser("ingest", help="stream MQTT telemetry into TimescaleDB")
    ing.add_argument("--metrics-port", type=int, default=9102)

    dr = sub.add_parser(
        "dr", help="demand-response controller: one instance leads (advisory lock), the others stand by"
    )
    dr.add_argument("--name", default=None, help="this instance's name (default: host name + random suffix)")
    dr.add_argument("--metrics-port", type=int, default=9103)

    oadr = sub.add_parser("openadr", help="OpenADR 2.0b VEN: take events from a VTN (LISHUI_OPENADR__*)")
    oadr.add_argument("--metrics-port", type=int, default=0)

    api = sub.add_parser("api", help="serve the HTTP API and dashboard")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)

    ocpp_cli.add_parser(sub)

    demo = sub.add_parser("demo", help="the whole stack on a simulated county")
    demo.add_argument("scenario", nargs="?", default="default")
    demo.add_argument("--county", action="store_true", help="the full county scenario (19 towns)")
    demo.add_argument("--time-factor", type=float, default=None, help="simulated seconds per real second")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    setup_logging(
        args.log_level or settings.log_level, json_lines=settings.log_json and args.command != "demo"
    )
    if args.command == "db":
        return _migrate(settings) if args.db_command == "migrate" else _seed(settings, args.scenario)
    if args.command in ("ocpp", "charging"):
        return ocpp_cli.dispatch(settings, args)
    handlers = {
        "sim": _sim,
        "gateway": _gateway,
        "ingest": _ingest,
        "dr": _dr,
        "openadr": _openadr,
        "api": _api,
        "demo": _demo,
    }
    return handlers[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
