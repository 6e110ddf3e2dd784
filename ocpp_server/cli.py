"""``lishui ocpp ...`` and ``lishui charging ...``: wire with ``add_parser(sub)`` and ``dispatch``.

In lishui/cli.py::build_parser: ``ocpp_cli.add_parser(sub)``; in main, for ``args.command in ("ocpp",
"charging")``: ``return ocpp_cli.dispatch(settings, args)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from typing import Any

import psycopg

from core.charging import registry, sessions
from core.settings import Settings


def add_parser(sub: Any) -> None:
    srv = sub.add_parser("ocpp", help="run the OCPP central system (1.6J and 2.0.1)")
    srv.add_argument("--host", default=None)
    srv.add_argument("--port", type=int, default=None)
    srv.add_argument("--tls-cert", default=None)
    srv.add_argument("--tls-key", default=None)
    srv.add_argument("--node", default=None)
    srv.add_argument("--reuse-port", action="store_true", help="share the port with other server processes")
    srv.add_argument("--metrics-port", type=int, default=0)

    ch = sub.add_parser("charging", help="manage charge points, tokens and violations")
    chs = ch.add_subparsers(dest="charging_command", required=True)
    add = chs.add_parser("add-pile", help="register a pile (lifecycle proposed)")
    add.add_argument("key")
    add.add_argument("site")
    add.add_argument("--ocpp-id")
    add.add_argument("--max-power-w", type=float)
    add.add_argument("--speed", choices=["fast", "slow"], default="slow")
    add.add_argument("--connectors", type=int, default=1)
    add.add_argument("--password")
    for action in registry.TRANSITIONS:
        p = chs.add_parser(action.replace("_", "-"), help=f"lifecycle: {action}")
        p.add_argument("key")
        p.set_defaults(lifecycle_action=action)
    pw = chs.add_parser("set-password", help="set a pile's Basic-auth password (stored hashed)")
    pw.add_argument("key")
    pw.add_argument("password")
    tok = chs.add_parser("add-token", help="add or update an id token")
    tok.add_argument("token")
    tok.add_argument("--tenant")
    tok.add_argument("--valid-until", type=datetime.fromisoformat)
    tok.add_argument("--blocked", action="store_true")
    tok.add_argument("--parent")
    for name in ("piles", "violations", "transactions", "tokens"):
        lp = chs.add_parser(name, help=f"list {name}")
        lp.add_argument("--pile")
        lp.add_argument("--site")


def dispatch(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "ocpp":
        return _serve(settings, args)
    return asyncio.run(_charging(settings, args))


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from core.service import run, setup_logging, start_metrics_endpoint
    from ocpp_server.service import run_ocpp_server
    from ocpp_server.settings import ocpp_settings

    setup_logging(settings.log_level, settings.log_json)
    start_metrics_endpoint(args.metrics_port)
    cfg = ocpp_settings(
        settings,
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        node=args.node,
        reuse_port=args.reuse_port or None,
    )
    return run(lambda: run_ocpp_server(settings, ocpp=cfg))


async def _charging(settings: Settings, args: argparse.Namespace) -> int:
    cmd = args.charging_command
    try:
        async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
            out: Any
            if cmd == "add-pile":
                out = await registry.add_pile(
                    conn,
                    args.key,
                    args.site,
                    ocpp_id=args.ocpp_id,
                    max_power_w=args.max_power_w,
                    speed=args.speed,
                    connectors=args.connectors,
                    password=args.password,
                )
            elif getattr(args, "lifecycle_action", None):
                out = {
                    "key": args.key,
                    "lifecycle": await registry.transition(conn, args.key, args.lifecycle_action),
                }
            elif cmd == "set-password":
                await registry.set_password(conn, args.key, args.password)
                out = {"key": args.key, "password": "set"}
            elif cmd == "add-token":
                out = await registry.add_token(
                    conn,
                    args.token,
                    tenant_key=args.tenant,
                    valid_until=args.valid_until,
                    blocked=args.blocked,
                    parent=args.parent,
                )
            elif cmd == "piles":
                out = await registry.list_piles(conn, site=args.site)
            elif cmd == "violations":
                out = await registry.list_violations(conn, pile=args.pile, site=args.site)
            elif cmd == "transactions":
                out = await sessions.list_transactions(conn, pile=args.pile, site=args.site)
            else:
                out = await registry.list_tokens(conn)
    except (registry.PileNotFound, registry.PileExists, registry.IllegalTransition, ValueError) as err:
        print(f"error: {err}")
        return 1 if not isinstance(err, registry.IllegalTransition) else 3
    print(json.dumps(out, default=str, ensure_ascii=False, indent=2))
    return 0
