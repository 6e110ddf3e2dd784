"""Generates ``scenarios/county.yaml``: all 19 towns of Lixian with parks, small hydro and town meters.

Run ``python -m simulators.generate_county`` after changing it; the YAML is what gets committed and
loaded. Deterministic (fixed seed), so regenerating without changes gives the same file.
Coordinates are approximate town centres; names of substations follow the county's grid where known
(110 kV Xiaodukou, Huolianpo, Mengxi; 35 kV Yiwan) and are generic elsewhere.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).parent / "scenarios" / "county.yaml"

# key: (name, latitude, longitude, town feeder peak MW, substation)
TOWNS: dict[str, tuple[str, float, float, float, str]] = {
    "liyang": ("澧阳街道", 29.633, 111.758, 38.0, "110kV澧阳变"),
    "lipu": ("澧浦街道", 29.620, 111.785, 26.0, "110kV澧浦变"),
    "lixi": ("澧西街道", 29.640, 111.730, 18.0, "35kV澧西变"),
    "lidan": ("澧澹街道", 29.652, 111.772, 22.0, "110kV澧澹变"),
    "xiaodukou": ("小渡口镇", 29.600, 111.850, 16.0, "110kV小渡口变"),
    "mengxi": ("梦溪镇", 29.560, 111.700, 10.0, "110kV梦溪变"),
    "fuxingchang": ("复兴厂镇", 29.720, 111.700, 7.0, "35kV复兴厂变"),
    "yanjing": ("盐井镇", 29.620, 111.550, 9.0, "35kV盐井变"),
    "wangjiachang": ("王家厂镇", 29.720, 111.550, 6.0, "35kV王家厂变"),
    "chengtoushan": ("城头山镇", 29.690, 111.660, 6.5, "35kV城头山变"),
    "jinluo": ("金罗镇", 29.580, 111.950, 8.0, "35kV金罗变"),
    "matoupu": ("码头铺镇", 29.740, 111.830, 7.0, "35kV码头铺变"),
    "cennan": ("涔南镇", 29.550, 111.800, 6.0, "35kV涔南变"),
    "dayandang": ("大堰垱镇", 29.660, 111.630, 7.5, "35kV大堰垱变"),
    "ganxitan": ("甘溪滩镇", 29.780, 111.450, 4.5, "35kV甘溪滩变"),
    "huolianpo": ("火连坡镇", 29.800, 111.580, 5.5, "110kV火连坡变"),
    "rudong": ("如东镇", 29.700, 111.900, 6.0, "35kV如东变"),
    "guanyuan": ("官垸镇", 29.520, 111.920, 5.0, "35kV宜万变"),  # Yiwan substation
    "linan": ("澧南镇", 29.570, 111.760, 6.5, "35kV澧南变"),
}
BIG_TOWNS = {"liyang", "lipu", "lixi", "lidan", "xiaodukou", "mengxi"}  # two main transformers

# Industrial parks: key, name, town, PV inverters, inverter kW, batteries (kW, kWh), loads
PARKS: list[tuple[str, str, str, int, int, list[tuple[int, int]], int]] = [
    ("xdk-park", "小渡口高新技术产业园", "xiaodukou", 14, 250, [(1000, 2000), (500, 1000)], 9),
    ("lpu-edz", "澧县经济开发区澧浦园", "lipu", 12, 250, [(1000, 2000)], 8),
    ("ldn-park", "澧澹工业集中区", "lidan", 8, 200, [(500, 1000)], 6),
    ("yj-salt", "盐井盐化工园区", "yanjing", 6, 200, [(500, 1000)], 6),
    ("mx-park", "梦溪工业集中区", "mengxi", 8, 150, [(500, 1000)], 6),
    ("jl-park", "金罗农产品加工园", "jinluo", 6, 150, [(250, 500)], 5),
    ("mtp-park", "码头铺建材产业园", "matoupu", 5, 150, [(250, 500)], 5),
    ("fxc-park", "复兴厂食品工业园", "fuxingchang", 5, 100, [(250, 500)], 4),
    ("dyd-park", "大堰垱轻工园", "dayandang", 5, 100, [], 4),
]
LOAD_TYPES: list[tuple[str, str, str, int, int]] = [
    # name, vendor, shape, min kW, max kW
    ("kiln", "湘北陶瓷", "continuous", 800, 2500),
    ("machining", "澧州机械", "two_shift", 400, 1500),
    ("textile", "澧水纺织", "two_shift", 500, 1800),
    ("coldstore", "澧县冷链", "flat", 300, 900),
    ("chemicals", "盐井化工", "continuous", 1000, 3000),
    ("food", "澧县食品", "one_shift", 300, 1200),
    ("cement-grinding", "澧县建材", "two_shift", 1500, 3500),
]
# Valley filling (填谷) by load type: (most a raise can add, share of rated; the contracted ceiling a
# raise stops at, share of rated). Derived from the type, not drawn, so the rest of the county stays as
# it was generated.
VALLEY_FILLING: dict[str, tuple[float, float]] = {
    "kiln": (0.10, 1.05),  # continuous firing: only a little more through the kiln
    "machining": (0.20, 1.0),  # batches of the day shift brought forward into the night
    "textile": (0.20, 1.0),
    "coldstore": (0.35, 1.3),  # pre-cooling stores cold in the goods: above its usual (flat) draw
    "chemicals": (0.15, 1.1),  # electrolysis run harder at night
    "food": (0.25, 1.0),  # boilers and cold rooms ahead of the shift
    "cement-grinding": (0.50, 1.0),  # grinding into the silos: the classic valley load
}

# Small hydro on the Li river tributaries: site key, name, town, units (kW), head m
HYDRO: list[tuple[str, str, str, list[int], float]] = [
    ("wjc-hydro", "王家厂水库电站", "wangjiachang", [3200, 3200, 1600], 42.0),
    ("hlp-hydro", "火连坡梯级电站", "huolianpo", [2500, 2000, 1250], 30.0),
    ("yj-hydro", "盐井涔水电站", "yanjing", [1600, 1250, 800], 24.0),
    ("gxt-hydro", "甘溪滩水电站", "ganxitan", [2000, 1600, 1000, 630], 36.0),
]


def _site(
    key: str,
    name: str,
    tenant: str,
    town: str,
    kind: str,
    tier: int,
    feeder: str,
    rng: random.Random,
) -> dict[str, Any]:
    _, lat, lon, _, _ = TOWNS[town]
    return {
        "key": key,
        "name": name,
        "tenant": tenant,
        "town": town,
        "kind": kind,
        "tier": tier,
        "feeder": feeder,
        "latitude": round(lat + rng.uniform(-0.015, 0.015), 4),
        "longitude": round(lon + rng.uniform(-0.015, 0.015), 4),
    }


def _device(
    key: str,
    site: str,
    kind: str,
    profile: str,
    vendor: str,
    model: str,
    rated_w: float,
    sim: dict[str, Any],
    tier: int | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "key": key,
        "site": site,
        "kind": kind,
        "profile": profile,
        "vendor": vendor,
        "model": model,
        "rated_power_w": round(rated_w),
    }
    if tier is not None:
        d["tier"] = tier
    d["sim"] = sim
    return d


def county() -> dict[str, Any]:
    rng = random.Random(20240601)
    tenants: list[dict[str, Any]] = [
        {"key": "lixian-grid", "name": "国网澧县供电公司", "kind": "grid"},
        {"key": "lixian-county", "name": "澧县发展和改革局", "kind": "county"},
        {"key": "lixian-hydro", "name": "澧县水利水电开发有限公司", "kind": "park"},
        {"key": "lixian-hospital", "name": "澧县人民医院", "kind": "park"},
        {"key": "lixian-water", "name": "澧县自来水公司", "kind": "park"},
    ]
    sites: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []

    # Town substations: one transformer meter per main transformer.
    for town, (name, _, _, peak_mw, substation) in TOWNS.items():
        site = f"{town}-sub"
        sites.append(
            _site(site, f"{name}{substation}", "lixian-grid", town, "substation", 3, substation, rng)
        )
        count = 2 if town in BIG_TOWNS else 1
        for i in range(1, count + 1):
            devices.append(
                _device(
                    f"{town}-tx{i}",
                    site,
                    "meter",
                    "sunspec-meter",
                    "SimMeter",
                    "SM-3P-203",
                    peak_mw * 1.3e6 / count,
                    {
                        "role": "transformer",
                        "peak_load_w": peak_mw * 1e6 / count,
                        "shape": "town",
                        "aggregate_site": False,
                    },
                )
            )

    # Industrial parks.
    for key, name, town, n_pv, pv_kw, batteries, n_loads in PARKS:
        tenant = f"{key}-co"
        tenants.append({"key": tenant, "name": f"{name}运营公司", "kind": "park"})
        substation = TOWNS[town][4]
        sites.append(_site(key, name, tenant, town, "park", 3, f"{substation} 10kV{name[:2]}线", rng))
        park_peak_w = 0.0
        for i in range(1, n_pv + 1):
            devices.append(
                _device(
                    f"{key}-pv-{i:02d}",
                    key,
                    "pv_inverter",
                    "sunspec-pv-inverter",
                    "SimSolar",
                    f"SS-PV-{pv_kw}K",
                    pv_kw * 1000,
                    {"tilt_deg": rng.choice([10, 15, 20, 25]), "azimuth_deg": rng.choice([160, 180, 200])},
                )
            )
        for i, (kw, kwh) in enumerate(batteries, start=1):
            devices.append(
                _device(
                    f"{key}-bess-{i}",
                    key,
                    "battery",
                    "sunspec-battery",
                    "SimStore",
                    f"SST-{kw}-{kwh}",
                    kw * 1000,
                    {"capacity_wh": kwh * 1000, "initial_soc_pct": rng.choice([40, 50, 60, 70])},
                )
            )
        for i in range(1, n_loads + 1):
            kind_name, vendor, shape, lo_kw, hi_kw = rng.choice(LOAD_TYPES)
            rated_kw = rng.randrange(lo_kw, hi_kw + 1, 50)
            park_peak_w += rated_kw * 1000
            devices.append(
                _device(
                    f"{key}-load-{i:02d}",
                    key,
                    "load",
                    "lixian-flexload-v1",
                    vendor,
                    f"{kind_name} line {i}",
                    rated_kw * 1000,
                    {
                        "shape": shape,
                        "max_curtailable_w": round(rated_kw * 1000 * rng.uniform(0.3, 0.5)),
                        "max_raisable_w": round(rated_kw * 1000 * VALLEY_FILLING[kind_name][0]),
                        "max_load_w": round(rated_kw * 1000 * VALLEY_FILLING[kind_name][1]),
                    },
                )
            )
        base_w = round(park_peak_w * 0.15, -3)
        devices.append(
            _device(
                f"{key}-meter-grid",
                key,
                "meter",
                "sunspec-meter",
                "SimMeter",
                "SM-3P-203",
                park_peak_w * 1.3,
                {"role": "grid_connection", "peak_load_w": base_w, "shape": "two_shift"},
            )
        )

    # Small hydro.
    for key, name, town, units, head in HYDRO:
        sites.append(_site(key, name, "lixian-hydro", town, "hydro", 2, f"{TOWNS[town][4]} 10kV电站线", rng))
        for i, kw in enumerate(units, start=1):
            devices.append(
                _device(
                    f"{key}-{i}",
                    key,
                    "hydro",
                    "lixian-hydro-v1",
                    "Lixian Hydro",
                    f"HL-{kw}",
                    kw * 1000,
                    {
                        "head_m": head,
                        "reservoir_area_m2": round(kw * 40, -3),
                        "typical_output_w": round(kw * 1000 * 0.4),
                        "initial_level_m": round(rng.uniform(3.0, 5.0), 1),
                    },
                )
            )

    # Protected (tier 0) sites: never curtailed; PV and storage keep them going.
    sites.append(
        _site(
            "county-hospital",
            "澧县人民医院",
            "lixian-hospital",
            "liyang",
            "public",
            0,
            "110kV澧阳变 10kV医院专线",
            rng,
        )
    )
    devices += [
        _device(
            "county-hospital-meter",
            "county-hospital",
            "meter",
            "sunspec-meter",
            "SimMeter",
            "SM-3P-203",
            3.0e6,
            {"role": "grid_connection", "peak_load_w": 2.2e6, "shape": "essential"},
        ),
        _device(
            "county-hospital-pv-1",
            "county-hospital",
            "pv_inverter",
            "sunspec-pv-inverter",
            "SimSolar",
            "SS-PV-100K",
            100_000,
            {"tilt_deg": 15},
        ),
        _device(
            "county-hospital-pv-2",
            "county-hospital",
            "pv_inverter",
            "sunspec-pv-inverter",
            "SimSolar",
            "SS-PV-100K",
            100_000,
            {"tilt_deg": 15},
        ),
        _device(
            "county-hospital-bess",
            "county-hospital",
            "battery",
            "sunspec-battery",
            "SimStore",
            "SST-250-500",
            250_000,
            {"capacity_wh": 500_000, "initial_soc_pct": 80, "local_schedule": False},
        ),
    ]
    water_works = (("water-works-1", "澧县第一自来水厂", "lipu"), ("water-works-2", "澧县城北水厂", "lidan"))
    for key, name, town in water_works:
        feeder = f"{TOWNS[town][4]} 10kV水厂专线"
        sites.append(_site(key, name, "lixian-water", town, "public", 0, feeder, rng))
        devices += [
            _device(
                f"{key}-meter",
                key,
                "meter",
                "sunspec-meter",
                "SimMeter",
                "SM-3P-203",
                2.0e6,
                {"role": "grid_connection", "peak_load_w": 1.2e6, "shape": "essential"},
            ),
            _device(
                f"{key}-pv-1",
                key,
                "pv_inverter",
                "sunspec-pv-inverter",
                "SimSolar",
                "SS-PV-100K",
                100_000,
                {"tilt_deg": 10},
            ),
        ]

    _public_charging(tenants, sites, devices, rng)

    return {
        "name": "county",
        "description": (
            "Lixian county (澧县): transformer meters in all 19 towns and subdistricts, industrial "
            "parks with rooftop PV, storage and flexible loads, small hydro on the Li river "
            "tributaries, and the protected (tier 0) county hospital and water works. "
            "Generated by simulators/generate_county.py."
        ),
        "time_factor": 1,
        "start": None,
        "tenants": tenants,
        "sites": sites,
        "devices": devices,
    }


def _public_charging(
    tenants: list[dict[str, Any]],
    sites: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    rng: random.Random,
) -> None:
    """Public charging in every town (the county's aim): a station per town run by the county's charging
    operator, OCPP piles simulated by simulators.ocpp (``sim`` is the pile's PileSpec). Big towns get two
    120 kW DC and three 7 kW AC piles, the others one 60 kW DC and two 7 kW AC piles."""
    tenants.append({"key": "lixian-charging", "name": "澧县城乡充电运营有限公司", "kind": "operator"})
    for town, (name, *_rest, substation) in TOWNS.items():
        site = f"{town}-charging"
        sites.append(
            _site(
                site,
                f"{name}公共充电站",
                "lixian-charging",
                town,
                "charging",
                5,
                f"{substation} 10kV公用线",
                rng,
            )
        )
        big = town in BIG_TOWNS
        tokens = [f"LX-{town[:8].upper()}-{n:03d}" for n in range(1, 7)]
        piles = [("dc", i) for i in range(1, 3 if big else 2)] + [
            ("ac", i) for i in range(1, 4 if big else 3)
        ]
        for kind, i in piles:
            key = f"{town}-cp-{kind}-{i}"
            fast = kind == "dc"
            watts = (120_000 if big else 60_000) if fast else 7_000
            sim: dict[str, Any] = {
                "version": "2.0.1" if (fast or i % 2 == 0) else "1.6",
                "connectors": 2 if fast else 1,
                "fast": fast,
                "arrivals_per_day": 16 if fast else 4,
                "password": f"{key}-{rng.getrandbits(48):012x}",
                "id_tokens": tokens,
            }
            model = f"SC-{'DC' if fast else 'AC'}-{watts // 1000}K"
            devices.append(_device(key, site, "charge_point", "ocpp", "SimCharge", model, watts, sim))


class _Flow(dict[str, Any]):
    """A mapping written on one line (tenants, ``sim`` parameters); everything else is block style."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))


def _flow_leaves(scenario: dict[str, Any]) -> dict[str, Any]:
    scenario["tenants"] = [_Flow(t) for t in scenario["tenants"]]
    for d in scenario["devices"]:
        d["sim"] = _Flow(d["sim"])
    return scenario


def main() -> None:
    text = yaml.dump(
        _flow_leaves(county()),
        Dumper=_Dumper,
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=False,
        width=110,
    )
    header = "# Generated by `python -m simulators.generate_county`; edit the generator, not this file.\n"
    OUT.write_text(header + text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
