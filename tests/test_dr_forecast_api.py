"""Forecasts through the API on the test database: seven weeks of synthetic 15-minute history (rollup
rows, as test_dr_baselines seeds them), a day-ahead forecast issued through the API with a cloud input
and the real 2023 holiday calendar, then 'what happened' written as raw telemetry and rolled up as
ingest does, and the error report checked against numbers computed here; the day-ahead capacity
register; bad input as 4xx.

Forecasts cover every site of the database, and other tests of the same run leave sites behind (PV
inverters get a PV series whatever their history): per-site checks look at this test's own sites, and
the county is checked as the sum of what it is made of."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from dr_harness import flex_site, write_history

from core import registry
from core.dr.baselines import CHINA, SLOTS_PER_DAY, Calendar
from core.dr.forecast import PvArray, clear_sky_index, cloud_slots, pv_basis
from ingest.maintenance import refresh_rollups

# The Monday after 2023's Labour Day holiday, so the calendar decides which days are similar; no other
# test writes these days.
TARGET = date(2023, 5, 8)
TARGET2 = date(2023, 5, 17)  # the capacity register's day: its own site's history starts after TARGET
FIRST = date(2023, 3, 20)
# 2023's Labour Day holiday and its make-up workdays (调休).
HOLIDAYS = [date(2023, 4, 29) + timedelta(days=i) for i in range(5)]
MAKE_UP = [date(2023, 4, 23), date(2023, 5, 6)]
CALENDAR = Calendar(frozenset(HOLIDAYS), frozenset(MAKE_UP))
PLACE = (29.60, 111.84)
PV = [PvArray(250.0, 20.0, 160.0), PvArray(250.0, 20.0, 160.0)]
PV_PERFORMANCE = 0.8  # history: the arrays gave 80 % of clear-sky potential every day

HOURS = np.arange(SLOTS_PER_DAY) / 4
LOAD_A = 1000 + 800 * np.exp(-(((HOURS - 18.5) / 1.5) ** 2)) + 300 * np.exp(-(((HOURS - 10) / 2) ** 2))
LOAD_B = 400 + 300 * np.exp(-(((HOURS - 17.75) / 1.0) ** 2))
CLOUD = [0.0] * 12 + [1.0] * 12  # clear morning, overcast afternoon


def load_of(profile: np.ndarray, day: date) -> np.ndarray:
    return profile if CALENDAR.is_working_day(day) else 0.6 * profile


async def write_kw(conn: psycopg.AsyncConnection[Any], device_id: int, day: date, kw: np.ndarray) -> None:
    """Two readings per interval, 1 kW either side of the value, as raw telemetry (W), marked for the
    rollup refresh (``refresh_rollups`` then computes the 15-minute means the error report reads)."""
    start = datetime.combine(day, datetime.min.time(), CHINA)
    rows = []
    for slot, value in enumerate(kw):
        ts = start + timedelta(minutes=15 * slot)
        rows += [(ts + timedelta(minutes=2), device_id, 1, (value - 1) * 1000)]
        rows += [(ts + timedelta(minutes=9), device_id, 1, (value + 1) * 1000)]
    async with conn.cursor() as cur:
        async with cur.copy("COPY telemetry (ts, device_id, metric_id, value) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
        await cur.execute(
            "SELECT mark_rollups_dirty(%s, %s)", ([r[0] for r in rows], [device_id] * len(rows))
        )


@pytest.fixture(scope="module")
async def county(db_dsn: str) -> dict[str, Any]:
    """Site A (a park: grid meter with PV behind it) and site B (a meter), with history to TARGET."""
    tag = uuid.uuid4().hex[:6]
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        a, b = f"fc-park-{tag}", f"fc-sub-{tag}"
        await registry.upsert_site(conn, a, "park", town_key="mengxi", latitude=PLACE[0], longitude=PLACE[1])
        await registry.upsert_site(conn, b, "substation", town_key="mengxi")
        meter_a = await registry.upsert_device(conn, f"{a}-meter", a, "meter", rated_power_w=5e6)
        pv = [
            await registry.upsert_device(
                conn,
                f"{a}-pv-{i}",
                a,
                "pv_inverter",
                rated_power_w=array.rated_kw * 1000,
                attributes={"tilt_deg": array.tilt_deg, "azimuth_deg": array.azimuth_deg},
            )
            for i, array in enumerate(PV)
        ]
        meter_b = await registry.upsert_device(conn, f"{b}-meter", b, "meter", rated_power_w=2e6)
        days = [FIRST + timedelta(days=i) for i in range((TARGET - FIRST).days)]
        basis = pv_basis(days, PV, *PLACE)
        for day in days:
            pv_kw = PV_PERFORMANCE * basis[day]
            # The meter sees the load less what the PV behind it gives.
            await write_history(conn, meter_a, day, load_of(LOAD_A, day) - pv_kw)
            for device in pv:
                await write_history(conn, device, day, pv_kw / 2)
            await write_history(conn, meter_b, day, load_of(LOAD_B, day))
    return {"a": a, "b": b, "meter_a": meter_a, "pv": pv, "meter_b": meter_b}


def issue_body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "target_day": TARGET.isoformat(),
        "cloud_cover": CLOUD,
        "holidays": [d.isoformat() for d in HOLIDAYS],
        "make_up_workdays": [d.isoformat() for d in MAKE_UP],
    }
    return body | kw


async def test_issue_read_and_report_the_error(
    client: httpx.AsyncClient, county: dict[str, Any], db_dsn: str
) -> None:
    issued = await client.post("/api/v1/forecasts", json=issue_body())
    assert issued.status_code == 201, issued.text
    out = issued.json()
    assert out["target_day"] == TARGET.isoformat()
    assert f"{county['a']}/load" not in out["skipped"]

    series = (await client.get("/api/v1/forecasts", params={"day": TARGET.isoformat()})).json()
    assert series[0]["site"] is None  # the county first
    mine = (None, county["a"], county["b"])
    by = {(s["site"], s["kind"]): s for s in series if s["site"] in mine}
    assert set(by) == {
        (None, "load"),
        (None, "pv"),
        (county["a"], "load"),
        (county["a"], "pv"),
        (county["b"], "load"),
    }
    # Each day type repeats exactly, so the forecast is exact: the county load is A + B, plus whatever
    # load history other tests left in these days (none is expected, but it would not be this test's).
    others = [np.asarray(s["kw"]) for s in series if s["kind"] == "load" and s["site"] not in mine]
    expected_county = LOAD_A + LOAD_B + sum(others, np.zeros(SLOTS_PER_DAY))
    assert out["county_load"]["peak_kw"] == pytest.approx(expected_county.max(), rel=1e-6)
    assert out["county_load"]["sites"] == 2 + len(others)
    assert by[(county["a"], "load")]["kw"] == pytest.approx(LOAD_A, rel=1e-6)  # gross of its PV
    assert by[(county["b"], "load")]["kw"] == pytest.approx(LOAD_B, rel=1e-6)
    assert by[(None, "load")]["kw"] == pytest.approx(expected_county, rel=1e-6)
    assert datetime.fromisoformat(by[(county["a"], "load")]["starts_at"]) == datetime(
        2023, 5, 8, tzinfo=CHINA
    )
    # PV: calibrated to the 80 % of history, times Kasten–Czeplak of the cloud input.
    basis = pv_basis([TARGET], PV, *PLACE)[TARGET]
    expected_pv = PV_PERFORMANCE * basis * clear_sky_index(cloud_slots(CLOUD))
    pv_a = by[(county["a"], "pv")]
    assert pv_a["kw"] == pytest.approx(expected_pv, rel=1e-6, abs=1e-6)
    assert pv_a["detail"]["performance"] == pytest.approx(PV_PERFORMANCE, abs=1e-3)
    assert pv_a["detail"]["cloud_input"] is True
    only_b = await client.get(
        "/api/v1/forecasts", params={"day": TARGET.isoformat(), "site": county["b"], "kind": "load"}
    )
    assert [s["site"] for s in only_b.json()] == [county["b"]]

    # What then happened: A's load 10 % above, B's 10 % below, the PV at half its clear-sky potential.
    actual_pv = 0.5 * basis
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await write_kw(conn, county["meter_a"], TARGET, 1.1 * LOAD_A - actual_pv)
        for device in county["pv"]:
            await write_kw(conn, device, TARGET, actual_pv / 2)
        await write_kw(conn, county["meter_b"], TARGET, 0.9 * LOAD_B)
        await refresh_rollups(conn)
    report = await client.get("/api/v1/forecasts/error", params={"day": TARGET.isoformat(), "series": True})
    assert report.status_code == 200, report.text
    every = report.json()["series"]
    errors = {(s["site"], s["kind"]): s for s in every if s["site"] in mine}
    assert errors[(county["a"], "load")]["mape_pct"] == pytest.approx(100 / 11, rel=1e-4)
    assert errors[(county["b"], "load")]["mape_pct"] == pytest.approx(100 / 9, rel=1e-4)
    assert errors[(county["a"], "load")]["actual_kw"] == pytest.approx(1.1 * LOAD_A, rel=1e-6)
    assert errors[(county["b"], "load")]["actual_kw"] == pytest.approx(0.9 * LOAD_B, rel=1e-6)
    # The county's actual is its members' sum, known where every member's is.
    members = [s["actual_kw"] for s in every if s["kind"] == "load" and s["site"] is not None]
    actual_county = np.sum([[np.nan if v is None else v for v in a] for a in members], axis=0)
    known = np.isfinite(actual_county)
    county_mape = np.mean(np.abs(expected_county - actual_county)[known] / actual_county[known]) * 100
    assert errors[(None, "load")]["mape_pct"] == pytest.approx(county_mape, rel=1e-4)
    assert errors[(None, "load")]["intervals"] == int(known.sum())
    county_actual = errors[(None, "load")]["actual_kw"]
    assert [v is not None for v in county_actual] == list(known)
    assert [v for v in county_actual if v is not None] == pytest.approx(actual_county[known], rel=1e-6)
    assert errors[(None, "load")]["day_ahead"] is False  # issued now, for a day long past
    light = basis > 0
    expected_nmae = np.mean(np.abs(expected_pv - actual_pv)[light]) / 500 * 100
    assert errors[(county["a"], "pv")]["mape_pct"] is None
    assert errors[(county["a"], "pv")]["nmae_pct"] == pytest.approx(expected_nmae, rel=1e-4)
    assert errors[(county["a"], "pv")]["intervals"] == int(light.sum())

    # Reissued: readers take the latest, here without a cloud input (the typical index of history, 1).
    again = await client.post("/api/v1/forecasts", json=issue_body(cloud_cover=None))
    assert again.status_code == 201
    latest = await client.get(
        "/api/v1/forecasts", params={"day": TARGET.isoformat(), "site": county["a"], "kind": "pv"}
    )
    assert latest.json()[0]["kw"] == pytest.approx(PV_PERFORMANCE * basis, rel=1e-4, abs=1e-3)


async def test_day_ahead_capacity_register(
    client: httpx.AsyncClient, county: dict[str, Any], db_dsn: str
) -> None:
    params = {"day": TARGET2.isoformat(), "start": "17:00", "duration_min": 60}
    before = (await client.get("/api/v1/forecasts/capacity", params=params)).json()
    tag = uuid.uuid4().hex[:6]
    site = f"fc-flex-{tag}"
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        flex = await flex_site(conn, site)
        await registry.upsert_device(
            conn,
            f"{site}-bess",
            site,
            "battery",
            rated_power_w=500_000,
            attributes={"capacity_wh": 400_000, "soc_min_pct": 10, "planned_soc_pct": 90},
        )
        newcomer = await registry.upsert_device(
            conn, f"{site}-new", site, "load", profile="lixian-flexload-v1", rated_power_w=500_000
        )
        for back in range(1, 7):  # 600 kW around the clock on working days, 900 kW on the others
            day = TARGET2 - timedelta(days=back)
            await write_kw(
                conn, flex, day, np.full(SLOTS_PER_DAY, 600.0 if CALENDAR.is_working_day(day) else 900)
            )
        await refresh_rollups(conn)
    after = await client.get("/api/v1/forecasts/capacity", params=params)
    assert after.status_code == 200, after.text
    reg = after.json()
    assert datetime.fromisoformat(reg["starts_at"]) == datetime(2023, 5, 17, 17, tzinfo=CHINA)
    assert reg["window_source"] == "given"
    town, was = reg["towns"]["jinluo"], before["towns"].get("jinluo", {})
    # Curtailable: min(600 forecast - 300 floor, 400) kW. Storage: 80 % of 400 kWh at 95 % over 1 h.
    assert town["flexible_load"] - was.get("flexible_load", 0) == pytest.approx(300, rel=1e-3)
    assert town["storage"] - was.get("storage", 0) == pytest.approx(0.8 * 400 * 0.95, rel=1e-6)
    assert reg["total_kw"] - before["total_kw"] == pytest.approx(300 + 0.8 * 400 * 0.95, rel=1e-3)
    assert reg["aim_kw"] == 18_000 and reg["meets_aim"] is (reg["total_kw"] >= 18_000)
    assert reg["excluded"][f"{site}-new"].startswith("no day-ahead forecast")
    assert newcomer

    # Without a window: the peak hour of the county load forecast.
    assert (
        await client.post("/api/v1/forecasts", json=issue_body(target_day=TARGET2.isoformat()))
    ).status_code == 201
    county_load = (
        await client.get(
            "/api/v1/forecasts", params={"day": TARGET2.isoformat(), "county": True, "kind": "load"}
        )
    ).json()[0]["kw"]
    peak = int(np.argmax(np.convolve(county_load, np.ones(4), mode="valid")))
    auto = (await client.get("/api/v1/forecasts/capacity", params={"day": TARGET2.isoformat()})).json()
    assert auto["window_source"] == "forecast peak"
    expected_start = datetime.combine(TARGET2, datetime.min.time(), CHINA) + timedelta(minutes=15 * peak)
    assert datetime.fromisoformat(auto["starts_at"]) == expected_start
    assert auto["county_load_kw"] == pytest.approx(np.mean(county_load[peak : peak + 4]))


async def test_bad_input_is_4xx(client: httpx.AsyncClient) -> None:
    post = "/api/v1/forecasts"
    for bad in (
        issue_body(cloud_cover=[0.5] * 23),
        issue_body(cloud_cover=[1.5] * 24),
        issue_body(target_day="2999-01-01"),
        issue_body(target_day="2023-02-30"),
        issue_body(surprise=1),
        issue_body(holidays=["not a day"]),
    ):
        assert (await client.post(post, json=bad)).status_code == 422, bad
    assert (
        await client.post(post, content=b"{", headers={"content-type": "application/json"})
    ).status_code == 422
    assert (await client.get(post, params={"day": "2023-13-01"})).status_code == 422
    assert (await client.get(post, params={"day": "9999-12-31"})).status_code == 422
    assert (await client.get(post, params={"day": "2001-01-01"})).status_code == 404
    assert (await client.get(post, params={"day": TARGET.isoformat(), "kind": "wind"})).status_code == 422
    today = datetime.now(CHINA).date()
    not_over = await client.get(f"{post}/error", params={"day": today.isoformat()})
    assert not_over.status_code == 409 and "not over" in not_over.json()["detail"]
    assert (await client.get(f"{post}/error", params={"day": "2001-01-01"})).status_code == 404
    cap = f"{post}/capacity"
    assert (await client.get(cap, params={"start": "17:10"})).status_code == 422
    assert (await client.get(cap, params={"start": "23:30", "duration_min": 60})).status_code == 422
    assert (await client.get(cap, params={"start": "17:00", "duration_min": 50})).status_code == 422
    no_forecast = await client.get(cap, params={"day": "2001-01-01"})
    assert no_forecast.status_code == 409 and "forecast" in no_forecast.json()["detail"]
