"""How the pieces meet: a scenario seeds the registry, its simulators get served, and a gateway is
configured to poll them. Used by the CLI, the demo and the tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import psycopg
import yaml

from core import registry
from core.settings import Settings
from gateway.config import DeviceConfig, GatewayConfig
from simulators.clock import SimClock
from simulators.fleet import Endpoint, serve_fleet
from simulators.scenario import Scenario, load_scenario


async def seed_registry(settings: Settings, scenario: Scenario) -> dict[str, int]:
    """Register the scenario's tenants, sites and devices (idempotent)."""
    async with await psycopg.AsyncConnection.connect(settings.db.dsn) as conn:
        for t in scenario.tenants:
            await registry.upsert_tenant(conn, t.key, t.name, t.kind)
        for s in scenario.sites:
            await registry.upsert_site(
                conn, s.key, s.name, s.tenant, s.town, s.kind, s.tier, s.feeder, s.latitude, s.longitude
            )
        for d in scenario.devices:
            await registry.upsert_device(
                conn, d.key, d.site, d.kind, d.profile, d.vendor, d.model, d.rated_power_w, d.tier
            )
        await conn.commit()
    return {"tenants": len(scenario.tenants), "sites": len(scenario.sites), "devices": len(scenario.devices)}


def gateway_config(scenario: Scenario, endpoints: dict[str, Endpoint], name: str = "gw-1") -> GatewayConfig:
    """A gateway that polls every simulated device of the scenario."""
    devices = [
        DeviceConfig(
            key=d.key,
            site=d.site,
            profile=d.profile,
            host=endpoints[d.key].host,
            port=endpoints[d.key].port,
            unit_id=endpoints[d.key].unit_id,
        )
        for d in scenario.devices
        if d.key in endpoints
    ]
    return GatewayConfig(name=name, devices=devices)


def sim_clock(scenario: Scenario, time_factor: float | None) -> SimClock:
    return SimClock(factor=time_factor or scenario.time_factor or 1.0, start=scenario.start)


async def run_simulators(
    scenario_name: str,
    host: str,
    base_port: int,
    time_factor: float | None,
    gateway_file: str | None = None,
) -> None:
    """``lishui sim``: serve a scenario's devices until stopped, after printing where they are (and,
    if asked, writing a gateway file that polls them: ``lishui gateway --config FILE``)."""
    scenario = load_scenario(scenario_name)
    async with serve_fleet(
        scenario, host=host, base_port=base_port, clock=sim_clock(scenario, time_factor)
    ) as fleet:
        if gateway_file:
            config = gateway_config(scenario, fleet.endpoints, name=f"sim-{scenario.name}")
            text = yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)
            await asyncio.to_thread(Path(gateway_file).write_text, text, encoding="utf-8")
            print(f"gateway file written: {gateway_file}")
        kinds = Counter(d.kind for d in scenario.devices)
        print(
            f"scenario {scenario.name}: {len(fleet.endpoints)} Modbus devices "
            f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); Ctrl-C stops"
        )
        print(f"{'device':<28} {'kind':<12} {'profile':<22} {'address':<22} unit")
        by_key = {d.key: d for d in scenario.devices}
        for key, ep in fleet.endpoints.items():
            d = by_key[key]
            print(f"{key:<28} {d.kind:<12} {d.profile:<22} {ep.host + ':' + str(ep.port):<22} {ep.unit_id}")
        await asyncio.Event().wait()
