"""The demand-response API over ASGI on the test database: events (4xx for bad input, 409 for the
lifecycle), the audit, the report from the controller's tables, and the capacity register from the
registry and live telemetry."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from dr_harness import past_event

from core import registry
from core.dr.baselines import CHINA

START = datetime(2031, 3, 5, 1, 0, tzinfo=UTC)  # far from any other test's events


def body(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "peak_shaving",
        "target_kw": 5000,
        "starts_at": START.isoformat(),
        "ends_at": (START + timedelta(hours=1)).isoformat(),
        "notice": "day_ahead",
    }
    out.update(kw)
    return out


async def test_create_amend_cancel_with_audit(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/dr/events", json=body())
    assert created.status_code == 201, created.text
    event = created.json()
    assert event["state"] == "scheduled" and event["version"] == 1
    amended = await client.put(
        f"/api/v1/dr/events/{event['id']}", params={"version": 1}, json=body(target_kw=7000)
    )
    assert amended.status_code == 200, amended.text
    assert amended.json()["target_kw"] == 7000 and amended.json()["version"] == 2
    stale = await client.put(f"/api/v1/dr/events/{event['id']}", params={"version": 1}, json=body())
    assert stale.status_code == 409
    cancelled = await client.post(f"/api/v1/dr/events/{event['id']}/cancel", json={"reason": "grid ok"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = await client.post(f"/api/v1/dr/events/{event['id']}/cancel", json={"reason": "twice"})
    assert again.status_code == 409
    late_amend = await client.put(f"/api/v1/dr/events/{event['id']}", json=body())
    assert late_amend.status_code == 409
    detail = (await client.get(f"/api/v1/dr/events/{event['id']}")).json()
    assert [a["action"] for a in detail["audit"]] == ["created", "amended", "cancelled"]
    assert {a["actor"] for a in detail["audit"]} == {"api"}
    assert detail["runtime"] is None


async def test_bad_input_is_4xx(client: httpx.AsyncClient) -> None:
    off_grid = body(starts_at=(START + timedelta(minutes=7)).isoformat())
    assert (await client.post("/api/v1/dr/events", json=off_grid)).status_code == 422
    assert (await client.post("/api/v1/dr/events", json=body(cap_kw=1000))).status_code == 422
    unknown_town = body(scope="town", town_id=999)
    assert (await client.post("/api/v1/dr/events", json=unknown_town)).status_code == 422
    unknown_site = body(scope="sites", site_ids=[987654])
    assert (await client.post("/api/v1/dr/events", json=unknown_site)).status_code == 422
    unknown_feeder = body(scope="feeder", feeder="no-such-feeder")
    assert (await client.post("/api/v1/dr/events", json=unknown_feeder)).status_code == 422
    assert (await client.get("/api/v1/dr/events/2147483647")).status_code == 404
    assert (await client.get("/api/v1/dr/events/0")).status_code == 422
    assert (await client.post("/api/v1/dr/events/1/cancel", json={})).status_code == 422


async def test_report_from_controller_tables(client: httpx.AsyncClient, db_dsn: str) -> None:
    created = (
        await client.post(
            "/api/v1/dr/events",
            json=body(
                starts_at=(START + timedelta(days=1)).isoformat(),
                ends_at=(START + timedelta(days=1, minutes=30)).isoformat(),
            ),
        )
    ).json()
    event_id, t0 = created["id"], START + timedelta(days=1)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO dr_event_runtime (event_id, baseline_used, controller, activated_at)"
            " VALUES (%s, 'meter_before', 'test', %s)",
            (event_id, t0),
        )
        await conn.execute(
            "INSERT INTO dr_references (event_id, resource_id, kind, produces, reference_kw)"
            " VALUES (%s, 'load-a', 'flexible_load', false, 1000), (%s, 'hydro-a', 'hydro', true, 200)",
            (event_id, event_id),
        )
        for minute, (load_kw, hydro_kw) in enumerate([(800, 400), (700, 500), (650, 550)] * 2):
            ts = t0 + timedelta(minutes=5 * minute)
            await conn.execute(
                "INSERT INTO dr_measurements (event_id, ts, cycle, target_kw, delivered_kw, allocated_kw,"
                " controller) VALUES (%s, %s, %s, 5000, %s, 5000, 'test')",
                (event_id, ts, minute, (1000 - load_kw) + (hydro_kw - 200)),
            )
            await conn.execute(
                "INSERT INTO dr_resource_measurements VALUES (%s, %s, 'load-a', %s, 300),"
                " (%s, %s, 'hydro-a', %s, 300)",
                (event_id, ts, load_kw, event_id, ts, hydro_kw),
            )
    report = (await client.get(f"/api/v1/dr/events/{event_id}/report")).json()
    assert [i["cycles"] for i in report["intervals"]] == [3, 3]
    assert report["intervals"][0]["delivered_kw"] == pytest.approx((400 + 600 + 700) / 3)
    by_id = {r["resource_id"]: r for r in report["resources"]}
    assert by_id["load-a"]["delivered_kwh"] == pytest.approx(2 * (200 + 300 + 350) / 3 * 0.25)
    assert by_id["hydro-a"]["committed_kwh"] == pytest.approx(300 * 0.5)


async def test_capacity_register_counts_live_resources_per_town(
    client: httpx.AsyncClient, db_dsn: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    before = (
        (await client.get("/api/v1/dr/capacity")).json()["towns"].get("lidan", {}).get("flexible_load", 0)
    )
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await registry.upsert_site(conn, f"cap-park-{tag}", "cap park", town_key="lidan", tier=3)
        await registry.upsert_site(conn, f"cap-hosp-{tag}", "cap hospital", town_key="lidan", tier=0)
        load = await registry.upsert_device(
            conn,
            f"cap-load-{tag}",
            f"cap-park-{tag}",
            "load",
            profile="lixian-flexload-v1",
            rated_power_w=1_000_000,
            attributes={"floor_w": 300_000, "max_curtailable_w": 400_000},
        )
        protected = await registry.upsert_device(
            conn,
            f"cap-hload-{tag}",
            f"cap-hosp-{tag}",
            "load",
            profile="lixian-flexload-v1",
            rated_power_w=1_000_000,
        )
        stale = await registry.upsert_device(
            conn,
            f"cap-stale-{tag}",
            f"cap-park-{tag}",
            "load",
            profile="lixian-flexload-v1",
            rated_power_w=1_000_000,
        )
        now = datetime.now(UTC)
        await conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric_id, value) VALUES"
            " (%s, %s, 1, 900000), (%s, %s, 1, 900000), (%s, %s, 1, 900000)",
            (now, load, now, protected, now - timedelta(hours=2), stale),
        )
    reg = (await client.get("/api/v1/dr/capacity")).json()
    assert reg["aim_kw"] == 18_000
    # Only the live, unprotected load counts: min(900 - 300 floor, 400 curtailable) kW.
    assert reg["towns"]["lidan"]["flexible_load"] - before == pytest.approx(400, abs=1)
    assert reg["excluded"][f"cap-hload-{tag}"].startswith("tier 0")
    assert reg["excluded"][f"cap-stale-{tag}"] == "stale"
    assert reg["total_kw"] >= 400


BT_UNTIL = date(2024, 7, 3)  # a Wednesday; no other test has telemetry for these devices
BT_EVENT_DAY = date(2024, 7, 1)  # an event ran that Monday: never a tested or similar day


async def test_baseline_backtest_reports_per_method_error_on_non_event_days(
    client: httpx.AsyncClient, db_dsn: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    shape = 100 + 50 * np.sin(np.linspace(0, 2 * np.pi, 96))  # the same every working day
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await registry.upsert_site(conn, f"bt-park-{tag}", "bt park", town_key="lidan")
        ids = [
            await registry.upsert_device(
                conn, f"bt-load-{i}-{tag}", f"bt-park-{tag}", "load", profile="lixian-flexload-v1"
            )
            for i in range(2)
        ]
        rows = []
        for back in range(1, 70):
            day = BT_UNTIL - timedelta(days=back)
            odd = day.weekday() >= 5 or day == BT_EVENT_DAY  # weekends and the event day: 3 x the load
            for slot in range(96):
                bucket = datetime.combine(day, datetime.min.time(), CHINA) + timedelta(minutes=15 * slot)
                for device_id, kw in zip(ids, (shape[slot], 40.0), strict=True):
                    rows.append((bucket, device_id, kw * 1000 * (3 if odd else 1), bucket))
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO telemetry_15m (bucket, device_id, metric_id, n, sum, min, max, last, last_ts)"
                " VALUES (%s, %s, 1, 1, %s, 0, 0, 0, %s)",
                rows,
            )
        await past_event(conn, datetime.combine(BT_EVENT_DAY, time(17, 0), CHINA), 100)

    url = "/api/v1/dr/baselines/backtest"
    common = {"until": BT_UNTIL.isoformat(), "days": 5}
    got = await client.get(
        url,
        params={**common, "device": f"bt-load-0-{tag}", "method": ["last_5_working_days", "high_5_of_10"]},
    )
    assert got.status_code == 200, got.text
    report = got.json()
    assert report["days"] == ["2024-06-25", "2024-06-26", "2024-06-27", "2024-06-28", "2024-07-02"]
    assert [m["method"] for m in report["methods"]] == ["last_5_working_days", "high_5_of_10"]
    for m in report["methods"]:  # every similar day is the same: no error at all
        assert m["mape_pct"] == pytest.approx(0) and m["cv_rmse_pct"] == pytest.approx(0)
        assert m["days_tested"] == 5 and not m["skipped"]

    site = (await client.get(url, params={**common, "site": f"bt-park-{tag}"})).json()
    assert site["scope"] == f"site:bt-park-{tag}" and len(site["devices"]) == 2
    by_method = {m["method"]: m for m in site["methods"]}
    assert set(by_method) == {
        "high_5_of_10",
        "high_5_of_10_adjusted",
        "last_5_working_days",
        "last_5_working_days_adjusted",
        "meter_before_15min",
    }
    # 17:00-18:00 on the sine: meter-before holds the 16:45 level flat while the load falls on.
    actual = shape[68:72] + 40
    flat_before = shape[67] + 40
    assert by_method["meter_before_15min"]["mape_pct"] == pytest.approx(
        float(np.mean(np.abs(actual - flat_before) / actual) * 100)
    )
    assert by_method["high_5_of_10_adjusted"]["mape_pct"] == pytest.approx(0, abs=1e-9)

    bad = [
        {**common},
        {**common, "site": f"bt-park-{tag}", "device": f"bt-load-0-{tag}"},
        {**common, "device": f"bt-load-0-{tag}", "method": "nope"},
        {**common, "device": f"bt-load-0-{tag}", "start": "17:10"},
        {**common, "device": f"bt-load-0-{tag}", "start": "23:00", "intervals": 8},
        {**common, "device": f"bt-load-0-{tag}", "days": 0},
        {**common, "site": f"cap-park-{tag}"},  # no such site
    ]
    codes = [(await client.get(url, params=p)).status_code for p in bad]
    assert codes == [422, 422, 422, 422, 422, 422, 404]
    assert (await client.get(url, params={**common, "device": "no-such-device"})).status_code == 404
