"""How the pieces meet: a scenario seeds the registry, its simulators get served, and a gateway is
configured to poll them. Used by the CLI, the demo and the tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.types.json import Jsonb

from core import registry
from core.charging import registry as piles
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
            if d.kind != "charge_point":
                await registry.upsert_device(
                    conn, d.key, d.site, d.kind, d.profile, d.vendor, d.model, d.rated_power_w, d.tier
                )
        await conn.commit()
        piles = await seed_piles(conn, scenario)
    return {
        "tenants": len(scenario.tenants),
        "sites": len(scenario.sites),
        "devices": len(scenario.devices),
        "piles": piles,
    }


async def seed_piles(conn: psycopg.AsyncConnection[Any], scenario: Scenario) -> int:
    """The scenario's charge points as OCPP piles, accepted, with their passwords, and the id tokens their
    drivers present (idempotent: an existing pile keeps its lifecycle and password)."""
    for spec in scenario.pile_specs():
        assert spec.site is not None and spec.password is not None  # scenario validation
        try:
            await piles.add_pile(
                conn,
                spec.id,
                spec.site,
                max_power_w=spec.max_power_w,
                speed="fast" if spec.fast else "slow",
                vendor=spec.vendor,
                model=spec.model_name,
                lifecycle="accepted",
                connectors=spec.connectors,
                password=spec.password,
            )
        except piles.PileExists:
            if not (await piles.get_pile(conn, spec.id))["has_password"]:
                await piles.set_password(conn, spec.id, spec.password)
        for token in spec.id_tokens:
            await piles.add_token(conn, token)
        await conn.commit()
    return len(scenario.charge_points)


# Simulation parameters the demand-response controller's resource models read from a device's registry
# attributes (core.dr.fleet): the physics the registry cannot know otherwise.
DR_ATTRIBUTES = (
    "head_m",
    "efficiency",
    "reservoir_area_m2",
    "min_level_m",
    "floor_w",
    "max_curtailable_w",
    "max_raisable_w",
    "max_load_w",
    "capacity_wh",
)
_RENAMED = {"max_raisable_w": "raisable_w"}  # simulator name -> attribute name


async def seed_dr_attributes(settings: Settings, scenario: Scenario) -> int:
    """Copy the scenario's physics parameters the DR controller models into the devices' attributes
    (merged into what is stored); returns how many devices got some."""
    updated = 0
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        for d in scenario.devices:
            attrs = {_RENAMED.get(k, k): v for k, v in d.sim.items() if k in DR_ATTRIBUTES}
            if attrs:
                await conn.execute(
                    "UPDATE devices SET attributes = attributes || %s WHERE key = %s", (Jsonb(attrs), d.key)
                )
                updated += 1
    return updated


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
        kinds = Counter(d.kind for d in scenario.modbus_devices)
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
