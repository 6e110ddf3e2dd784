"""Scenario files: shape, references, the county's composition and peak-shaving capacity."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from simulators import generate_county
from simulators.clock import SimClock
from simulators.devices.factory import build_device
from simulators.physics.profiles import CST
from simulators.scenario import TOWN_KEYS, LoadSim, Scenario, load_scenario, peak_shaving_capacity_w

SLUG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MIGRATION = Path(__file__).parent.parent / "core" / "migrations" / "0002_towns.sql"


def test_town_keys_match_the_migration() -> None:
    assert set(re.findall(r"\(\s*\d+,\s*'([a-z]+)'", MIGRATION.read_text(encoding="utf-8"))) == set(TOWN_KEYS)
    assert len(TOWN_KEYS) == 19


def test_default_scenario() -> None:
    s = load_scenario("default")
    kinds = Counter(d.kind for d in s.devices)
    assert 7 <= len(s.modbus_devices) <= 8
    assert 1 <= kinds["charge_point"] <= 4
    assert {p.version for p in s.pile_specs()} == {"1.6", "2.0.1"}
    assert kinds["pv_inverter"] >= 1 and kinds["battery"] == 1 and kinds["meter"] == 1
    assert kinds["load"] == 3 and kinds["hydro"] == 1
    assert s.site("xdk-park").town == "xiaodukou"
    assert s.site(next(d.site for d in s.devices if d.kind == "hydro")).kind == "hydro"


def test_county_scenario() -> None:
    s = load_scenario("county")
    kinds = Counter(d.kind for d in s.devices)
    assert 150 <= len(s.modbus_devices) <= 300
    assert {site.town for site in s.sites} == set(TOWN_KEYS)
    # A transformer meter in every town.
    tx_towns = {
        s.site(d.site).town for d in s.devices if d.kind == "meter" and d.sim.get("role") == "transformer"
    }
    assert tx_towns == set(TOWN_KEYS)
    hydro_towns = {s.site(d.site).town for d in s.devices if d.kind == "hydro"}
    assert {"wangjiachang", "huolianpo", "yanjing", "ganxitan"} <= hydro_towns
    assert kinds["pv_inverter"] > 0 and kinds["battery"] > 0 and kinds["load"] > 0
    tier0 = {site.key for site in s.sites if site.tier == 0}
    assert {"county-hospital", "water-works-1"} <= tier0
    # Protected sites carry no curtailable load.
    assert not [d for d in s.devices if d.kind == "load" and s.site(d.site).tier == 0]
    # Public charging in every town, both OCPP versions, fast and slow.
    piles = s.pile_specs()
    assert {s.site(p.site).town for p in piles if p.site} == set(TOWN_KEYS)
    assert {p.version for p in piles} == {"1.6", "2.0.1"} and {p.fast for p in piles} == {True, False}
    for key in [t.key for t in s.tenants] + [x.key for x in s.sites] + [d.key for d in s.devices]:
        assert SLUG.match(key), key


def test_county_peak_shaving_capacity_is_at_least_18_mw() -> None:
    capacity = peak_shaving_capacity_w(load_scenario("county"))
    # hydro: rated - typical output; loads: curtailable at the profile's peak, above the process floor
    assert capacity["hydro_w"] > 5e6 and capacity["load_w"] > 5e6
    assert capacity["hydro_and_load_w"] >= 18e6


def test_county_loads_carry_valley_filling_limits_the_simulators_honour() -> None:
    s = load_scenario("county")
    clock = SimClock(factor=0, start=datetime(2026, 7, 15, 2, 0, tzinfo=CST))  # a weekday night
    night_raise_w = 0.0
    loads = [d for d in s.devices if d.kind == "load"]
    assert loads
    for d in loads:
        sim = d.sim_params()
        assert isinstance(sim, LoadSim)
        assert sim.max_raisable_w is not None and 0 < sim.max_raisable_w <= 0.5 * d.rated_power_w, d.key
        assert sim.max_load_w is not None and d.rated_power_w <= sim.max_load_w <= 1.3 * d.rated_power_w
        device: Any = build_device(d, None, clock)
        assert device.physics.p.max_raisable == sim.max_raisable_w  # not the 30 % default
        assert device.physics.p.ceiling == sim.max_load_w
        device.sync()
        night_raise_w += max(0.0, min(sim.max_raisable_w, sim.max_load_w - device.physics.baseline_w))
    # What the county's flexible loads can take on at night (valley filling): several MW, though less
    # than their rated power.
    assert 5e6 < night_raise_w < 0.5 * sum(d.rated_power_w for d in loads)


def test_county_yaml_is_what_the_generator_makes(tmp_path: Path) -> None:
    committed = yaml.safe_load(generate_county.OUT.read_text(encoding="utf-8"))
    assert committed == yaml.safe_load(yaml.safe_dump(generate_county.county(), allow_unicode=True))


def test_load_by_path_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "mini.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mini",
                "start": "2025-06-21T04:00:00+00:00",
                "sites": [{"key": "s1", "name": "S", "town": "linan"}],
                "devices": [
                    {
                        "key": "d1",
                        "site": "s1",
                        "kind": "pv_inverter",
                        "profile": "sunspec-pv-inverter",
                        "rated_power_w": 10000,
                        "sim": {"tilt_deg": 30},
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    s = load_scenario(path)
    assert s.devices[0].sim_params().tilt_deg == 30 and s.start is not None
    with pytest.raises(FileNotFoundError, match="default"):
        load_scenario("no-such-scenario")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "devices": [
                    {
                        "key": "d1",
                        "site": "nowhere",
                        "kind": "meter",
                        "profile": "sunspec-meter",
                        "rated_power_w": 1,
                    }
                ]
            },
            "unknown site",
        ),
        (
            {
                "devices": [
                    {
                        "key": "d1",
                        "site": "s1",
                        "kind": "meter",
                        "profile": "lixian-hydro-v1",
                        "rated_power_w": 1,
                    }
                ]
            },
            "simulated as profile",
        ),
        (
            {
                "devices": [
                    {
                        "key": "d1",
                        "site": "s1",
                        "kind": "hydro",
                        "profile": "lixian-hydro-v1",
                        "rated_power_w": 1,
                        "sim": {"head": 3},
                    }
                ]
            },
            "head",
        ),
        ({"sites": [{"key": "s1", "name": "S", "town": "atlantis"}]}, "town"),
        ({"start": "2025-06-21T04:00:00"}, "timezone"),
        ({"sites": [{"key": "Bad Key", "name": "S", "town": "linan"}]}, "pattern"),
        (
            {
                "devices": [
                    {
                        "key": "d1",
                        "site": "s1",
                        "kind": "load",
                        "profile": "lixian-flexload-v1",
                        "rated_power_w": 1000,
                        "sim": {"max_raisable_w": -1},
                    }
                ]
            },
            "max_raisable_w",
        ),
    ],
)
def test_invalid_scenarios_are_rejected(change: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "x", "sites": [{"key": "s1", "name": "S", "town": "linan"}], **change}
    with pytest.raises(ValidationError, match=message):
        Scenario.model_validate(base)
