"""The API over ASGI against a seeded TimescaleDB (and the real Mosquitto for /health)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from core import registry
from core.registry import DeviceResolver
from core.settings import Settings
from ingest.maintenance import refresh_rollups
from ingest.writer import Batch, TelemetryWriter

RUN = uuid.uuid4().hex[:6]
TENANT, SITE_A, SITE_B = f"op-{RUN}", f"park-{RUN}", f"hydro-{RUN}"
PV, METER, EMPTY = f"pv-{RUN}", f"meter-{RUN}", f"empty-{RUN}"
T0 = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)  # a Monday
SPAN = timedelta(hours=3)


def _value(i: int) -> float:
    return round(1000 * math.sin(i / 37) + 17 * (i % 11), 3)


@pytest.fixture(scope="module")
async def seeded(db_dsn: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await registry.upsert_tenant(conn, TENANT, "Operator", "operator")
        await registry.upsert_site(conn, SITE_A, "Park A", TENANT, "lipu", "park", 2)
        await registry.upsert_site(conn, SITE_B, "Hydro B", None, "mengxi", "hydro", 1)
        await registry.upsert_device(conn, PV, SITE_A, "pv_inverter", rated_power_w=50_000)
        await registry.upsert_device(conn, METER, SITE_A, "meter")
        await registry.upsert_device(conn, EMPTY, SITE_B, "hydro")
        await conn.execute("UPDATE devices SET status = 'fault' WHERE key = %s", (METER,))
    writer = TelemetryWriter(db_dsn, DeviceResolver())
    try:
        # Every 10 s for 3 hours, written out of order in a few transactions.
        readings = [
            (T0 + timedelta(seconds=10 * i), 1, _value(i)) for i in range(int(SPAN.total_seconds()) // 10)
        ]
        readings += [(T0 + timedelta(seconds=60 * i), 12, 5000.0 + i) for i in range(180)]
        for part in (readings[1::2], readings[0::2]):
            batch = Batch()
            batch.add_readings((SITE_A, PV), part)
            await writer.write(batch)
    finally:
        await writer.close()
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await refresh_rollups(conn)
    return {"readings": readings}


@pytest.fixture(scope="module")
async def client(settings: Settings, seeded: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


async def _raw(
    db_dsn: str, width: timedelta, agg: str, start: datetime, end: datetime
) -> list[tuple[Any, float]]:
    expr = {
        "avg": "avg(value)",
        "min": "min(value)",
        "max": "max(value)",
        "sum": "sum(value)",
        "count": "count(*)::float8",
        "last": "last(value, ts)",
    }[agg]
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        cur = await conn.execute(
            f"SELECT time_bucket(%s, ts), {expr} FROM telemetry t JOIN devices d ON d.id = t.device_id"
            " WHERE d.key = %s AND metric_id = 1 AND ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1",
            (width, PV, start, end),
        )
        return [(ts, v) for ts, v in await cur.fetchall()]


def _points(body: dict[str, Any]) -> list[tuple[datetime, float]]:
    return [(datetime.fromisoformat(p["ts"]), p["value"]) for p in body["points"]]


def _assert_same(api: list[tuple[datetime, float]], raw: list[tuple[Any, float]]) -> None:
    assert [a[0] for a in api] == [r[0] for r in raw]
    for a, r in zip(api, raw, strict=True):
        assert math.isclose(a[1], r[1], rel_tol=1e-9, abs_tol=1e-9), (a, r)


async def test_health_docs_and_catalogue(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ok",
        "database": {"ok": True, "detail": None},
        "broker": {"ok": True, "detail": None},
    }
    assert (await client.get("/docs")).status_code == 200
    assert "/api/v1/devices/{key}/series" in (await client.get("/openapi.json")).json()["paths"]
    metrics = (await client.get("/api/v1/metrics")).json()
    assert metrics[0] == {
        "id": 1,
        "name": "active_power_w",
        "unit": "W",
        "kind": "gauge",
        "description": metrics[0]["description"],
    }
    towns = (await client.get("/api/v1/towns")).json()
    assert len(towns) == 19 and towns[0]["key"] == "liyang"


async def test_health_reports_unreachable_services(settings: Settings) -> None:
    broken = settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"dsn": "postgresql://postgres@127.0.0.1:1/nowhere"}),
            "mqtt": settings.mqtt.model_copy(update={"port": 1}),
        }
    )
    app = create_app(broken)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            r = await c.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "degraded" and not body["database"]["ok"] and not body["broker"]["ok"]


async def test_registry_endpoints(client: httpx.AsyncClient) -> None:
    sites = (await client.get("/api/v1/sites", params={"tenant": TENANT})).json()
    assert [s["key"] for s in sites] == [SITE_A]
    assert sites[0]["town"] == "lipu" and sites[0]["device_count"] == 2 and sites[0]["tenant"] == TENANT
    assert SITE_B in [s["key"] for s in (await client.get("/api/v1/sites", params={"town": "mengxi"})).json()]
    assert (await client.get(f"/api/v1/sites/{SITE_B}")).json()["kind"] == "hydro"
    assert (await client.get("/api/v1/sites/no-such-site")).status_code == 404
    devices = (await client.get("/api/v1/devices", params={"site": SITE_A})).json()
    assert [d["key"] for d in devices] == [METER, PV]
    faulty = (await client.get("/api/v1/devices", params={"site": SITE_A, "status": "fault"})).json()
    assert [d["key"] for d in faulty] == [METER]
    pvs = (await client.get("/api/v1/devices", params={"site": SITE_A, "kind": "pv_inverter"})).json()
    assert [d["key"] for d in pvs] == [PV]
    pv = (await client.get(f"/api/v1/devices/{PV}")).json()
    assert pv["site"] == SITE_A and pv["rated_power_w"] == 50_000 and pv["lifecycle"] == "operating"
    assert pv["last_seen"] is not None
    assert (await client.get("/api/v1/devices/no-such-device")).status_code == 404
    assert (await client.get("/api/v1/devices", params={"limit": 0})).status_code == 422


async def test_latest(client: httpx.AsyncClient, seeded: dict[str, Any]) -> None:
    body = (await client.get(f"/api/v1/devices/{PV}/latest")).json()
    by_metric = {v["metric"]: v for v in body["values"]}
    assert set(by_metric) == {"active_power_w", "energy_import_wh"}
    last_power = max(r for r in seeded["readings"] if r[1] == 1)
    assert datetime.fromisoformat(by_metric["active_power_w"]["ts"]) == last_power[0]
    assert (
        by_metric["active_power_w"]["value"] == last_power[2] and by_metric["active_power_w"]["unit"] == "W"
    )
    assert by_metric["energy_import_wh"]["value"] == 5179.0
    assert (await client.get(f"/api/v1/devices/{EMPTY}/latest")).json() == {"device": EMPTY, "values": []}
    assert (await client.get("/api/v1/devices/nope/latest")).status_code == 404


@pytest.mark.parametrize(
    ("bucket", "rollup"),
    [
        ("1m", "telemetry_1m"),
        ("5m", "telemetry_1m"),
        ("15m", "telemetry_15m"),
        ("1h", "telemetry_15m"),
        ("1d", "telemetry_15m"),
        ("30s", None),
        ("90s", None),
    ],
)
@pytest.mark.parametrize("agg", ["avg", "min", "max", "sum", "last", "count"])
async def test_series_equals_raw(
    client: httpx.AsyncClient, db_dsn: str, bucket: str, rollup: str | None, agg: str
) -> None:
    # An unaligned window: rounded to whole buckets, the same way whatever the source.
    start, end = T0 + timedelta(minutes=7, seconds=5), T0 + timedelta(hours=2, minutes=31)
    r = await client.get(
        f"/api/v1/devices/{PV}/series",
        params={
            "metric": "active_power_w",
            "start": start.isoformat(),
            "end": end.isoformat(),
            "bucket": bucket,
            "agg": agg,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rollup"] == rollup and body["unit"] == "W" and body["agg"] == agg
    first, stop = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    assert first <= start and stop >= end
    if rollup:
        assert body["rollup_until"] == body["end"]  # everything refreshed: all from the rollup
    width = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400, "30s": 30, "90s": 90}[bucket]
    _assert_same(_points(body), await _raw(db_dsn, timedelta(seconds=width), agg, first, stop))


async def test_series_serves_unrefreshed_buckets_from_raw(client: httpx.AsyncClient, db_dsn: str) -> None:
    # Late data into an old, rolled-up bucket, without a refresh: the answer must include it.
    late_ts = T0 + timedelta(hours=1, minutes=20, seconds=3)
    writer = TelemetryWriter(db_dsn, DeviceResolver())
    try:
        batch = Batch()
        batch.add_readings((SITE_A, PV), [(late_ts, 1, 99_999.0)])
        await writer.write(batch)
    finally:
        await writer.close()
    try:
        for bucket, width in (("15m", 900), ("1m", 60), ("1h", 3600)):
            body = (
                await client.get(
                    f"/api/v1/devices/{PV}/series",
                    params={
                        "metric": "active_power_w",
                        "start": T0.isoformat(),
                        "end": (T0 + SPAN).isoformat(),
                        "bucket": bucket,
                        "agg": "max",
                    },
                )
            ).json()
            assert datetime.fromisoformat(body["rollup_until"]) <= late_ts
            assert max(p["value"] for p in body["points"]) == 99_999.0
            _assert_same(_points(body), await _raw(db_dsn, timedelta(seconds=width), "max", T0, T0 + SPAN))
    finally:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            await refresh_rollups(conn)


async def test_series_defaults_to_last_for_counters(client: httpx.AsyncClient) -> None:
    body = (
        await client.get(
            f"/api/v1/devices/{PV}/series",
            params={
                "metric": "energy_import_wh",
                "start": T0.isoformat(),
                "end": (T0 + SPAN).isoformat(),
                "bucket": "1h",
            },
        )
    ).json()
    assert body["agg"] == "last"
    assert [p["value"] for p in body["points"]] == [5059.0, 5119.0, 5179.0]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"metric": "no_such_metric"}, "unknown metric"),
        (
            {"metric": "active_power_w", "start": "2025-06-02T02:00:00Z", "end": "2025-06-02T01:00:00Z"},
            "before end",
        ),
        ({"metric": "active_power_w", "bucket": "1s"}, "larger bucket"),
        ({"metric": "active_power_w", "bucket": "5x"}, "bucket"),
        ({"metric": "active_power_w", "agg": "median"}, ""),
        ({"metric": "active_power_w", "start": "yesterday"}, ""),
        ({}, ""),
    ],
)
async def test_series_rejects_invalid_queries(
    client: httpx.AsyncClient, params: dict[str, str], fragment: str
) -> None:
    r = await client.get(f"/api/v1/devices/{PV}/series", params=params)
    assert r.status_code == 422, r.text
    assert fragment in str(r.json()["detail"])


async def test_series_of_unknown_device_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices/nope/series", params={"metric": "active_power_w"})
    assert r.status_code == 404


async def test_prometheus_metrics_count_requests_by_route(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lishui") as http:
            assert (await http.get("/api/v1/devices/no-such-device")).status_code == 404
            text = (await http.get("/metrics/")).text
    assert 'lishui_api_requests_total{method="GET",route="/api/v1/devices/{key}",status="404"}' in text
