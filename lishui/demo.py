"""``lishui demo``: simulators, gateway, ingest, the OCPP central system with simulated charging piles, the
demand-response controller and the API on a simulated county, in one process.

The controller's event clock is the simulators' clock, so an event's window lines up with the simulated
devices' day (the same as the wall clock unless ``--time-factor`` speeds the simulation up)."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from api.app import create_app
from core import db
from core.payloads import utcnow
from core.settings import Settings
from dr_controller.service import run_dr_controller
from gateway.service import run_gateway
from ingest.service import run_ingest
from lishui.composition import gateway_config, seed_dr_attributes, seed_registry, sim_clock
from lishui.webserver import serve_api
from ocpp_server.service import run_ocpp_server
from simulators.clock import SimClock
from simulators.fleet import serve_fleet
from simulators.ocpp import PileSpec, run_piles
from simulators.scenario import load_scenario

log = logging.getLogger("lishui.demo")


async def run_demo(settings: Settings, scenario_name: str, time_factor: float | None) -> None:
    await db.ensure_database(settings.db.dsn)
    await db.migrate(settings.db.dsn)
    scenario = load_scenario(scenario_name)
    await seed_registry(settings, scenario)
    await seed_dr_attributes(settings, scenario)
    clock = sim_clock(scenario, time_factor)
    async with serve_fleet(scenario, clock=clock) as fleet:
        config = gateway_config(scenario, fleet.endpoints, name="demo-gw")
        api_started = asyncio.Event()
        ocpp_port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(run_ingest(settings), name="ingest")
            tg.create_task(run_gateway(settings, config), name="gateway")
            tg.create_task(
                serve_api(create_app(settings), settings.api.host, settings.api.port, api_started), name="api"
            )
            tg.create_task(run_ocpp_server(settings, on_listening=ocpp_port.set_result), name="ocpp")
            tg.create_task(run_dr_controller(settings, name="demo", clock=clock), name="dr")
            await api_started.wait()
            port = await ocpp_port
            url = f"ws://{_client_host(settings.ocpp.host)}:{port}/ocpp"
            specs = scenario.pile_specs()
            tg.create_task(_run_piles(specs, url, clock), name="piles")
            _print_where_to_look(settings, scenario.name, len(config.devices), len(specs), url, clock)
            tg.create_task(_report_when_live(settings, {d.key for d in config.devices}), name="live-check")


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def _run_piles(specs: list[PileSpec], url: str, clock: SimClock) -> None:
    """The scenario's charging piles, connected to the demo's OCPP server until cancelled."""
    if not specs:
        return
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # the library logs every frame at INFO
    async with run_piles(specs, url, clock=clock, server_real_time=True) as piles:
        try:
            await piles.wait_accepted(within_s=60)
            print(f"All {len(piles)} charging piles are connected and accepted.", flush=True)
        except TimeoutError:
            log.warning("piles not all accepted", extra={"accepted": piles.accepted, "piles": len(piles)})
        await asyncio.Event().wait()


def _print_where_to_look(
    settings: Settings, scenario: str, devices: int, piles: int, ocpp_url: str, clock: SimClock
) -> None:
    base = f"http://{settings.api.host}:{settings.api.port}"
    dr_clock = (
        "the wall clock"
        if clock.factor == 1.0 and abs((clock.now() - utcnow()).total_seconds()) < 60
        else f"simulated time, now {clock.now():%Y-%m-%d %H:%M} UTC, x{clock.factor:g}"
    )
    print(
        f"""
Lishui demo: scenario '{scenario}', {devices} simulated Modbus devices, {piles} simulated charging piles,
gateway, ingest, OCPP central system, demand-response controller and API running.

  Dashboard       {base}/
  API docs        {base}/docs
  Devices         curl -s {base}/api/v1/devices
  Latest values   curl -s {base}/api/v1/devices/<device>/latest
  Series (1 min)  curl -s '{base}/api/v1/devices/<device>/series?metric=active_power_w&bucket=1m'
  OCPP            {ocpp_url}/{{chargePointId}}  (1.6J and 2.0.1, HTTP Basic auth)
  Charging piles  curl -s {base}/api/v1/charging/piles
  DR events       curl -s {base}/api/v1/dr/events   (POST one: see /docs; windows in {dr_clock})
  DR event        curl -s {base}/api/v1/dr/events/<id>   and   .../events/<id>/report
  DR capacity     curl -s {base}/api/v1/dr/capacity
  DR baselines    curl -s '{base}/api/v1/dr/baselines/backtest?site=<site>'
  Forecasts       curl -s '{base}/api/v1/forecasts?day=<tomorrow>&county=true'  and  .../forecasts/capacity
  MQTT stream     mosquitto_sub -h {settings.mqtt.host} -t '{settings.topic_root}/v1/#' -v
  Database        psql {settings.db.dsn}

Ctrl-C stops everything.
""",
        flush=True,
    )


async def _report_when_live(settings: Settings, keys: set[str]) -> None:
    """Say once when every simulated device has telemetry in the database."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        await asyncio.sleep(2)
        try:
            async with await psycopg.AsyncConnection.connect(settings.db.dsn) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM devices"
                    " WHERE key = ANY(%s) AND last_seen > now() - interval '1 minute'",
                    (list(keys),),
                )
                row = await cur.fetchone()
        except psycopg.Error as err:
            log.warning("live check failed", extra={"error": str(err)})
            continue
        live = row[0] if row else 0
        if live >= len(keys):
            print(
                f"All {live} devices are reporting live telemetry "
                f"({loop.time() - started:.0f} s after start).",
                flush=True,
            )
            return
