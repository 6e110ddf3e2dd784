"""The endpoints. Registry reads under /api/v1, telemetry under /api/v1/devices/{key}/..."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import aiomqtt
from fastapi import APIRouter, HTTPException, Query, Response, status

from api import queries as q
from api.deps import ConnDep, PoolDep, ScopeDep, SettingsDep
from api.models import (
    Agg,
    Check,
    Device,
    DeviceLatest,
    Health,
    LatestValue,
    Metric,
    Point,
    Series,
    Site,
    Town,
)
from core import mqtt as core_mqtt
from core.metrics import BY_NAME, MetricKind
from core.topics import KEY_PATTERN

router = APIRouter()
v1 = APIRouter(prefix="/api/v1")

HEALTH_TIMEOUT_S = 2.0
Key = Annotated[str, Query(pattern=f"^{KEY_PATTERN}$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


def _not_found(what: str, key: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {key!r} not found")


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(pool: PoolDep, settings: SettingsDep, response: Response) -> Health:
    """Database and broker reachability: 200 when both answer, 503 otherwise."""

    async def database() -> Check:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S), pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
            return Check(ok=True)
        except Exception as err:
            return Check(ok=False, detail=f"{type(err).__name__}: {err}".strip()[:200])

    async def broker() -> Check:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                async with core_mqtt.client(settings.mqtt, f"lishui-api-health-{uuid.uuid4().hex[:8]}"):
                    pass
            return Check(ok=True)
        except (aiomqtt.MqttError, TimeoutError, OSError) as err:
            return Check(ok=False, detail=f"{type(err).__name__}: {err}".strip()[:200])

    db_check, mqtt_check = await asyncio.gather(database(), broker())
    ok = db_check.ok and mqtt_check.ok
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "degraded", database=db_check, broker=mqtt_check)


@v1.get("/towns", response_model=list[Town])
async def towns(conn: ConnDep) -> list[dict[str, Any]]:
    return await q.list_towns(conn)


@v1.get("/sites", response_model=list[Site])
async def sites(
    conn: ConnDep,
    scope: ScopeDep,
    town: Annotated[str | None, Query(description="Town key")] = None,
    tenant: Annotated[str | None, Query(description="Tenant key")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return await q.list_sites(conn, scope, town=town, tenant=tenant, limit=limit, offset=offset)


@v1.get("/sites/{key}", response_model=Site, responses={404: {"description": "No such site"}})
async def site(conn: ConnDep, scope: ScopeDep, key: str) -> dict[str, Any]:
    found = await q.get_site(conn, scope, key)
    if found is None:
        raise _not_found("site", key)
    return found


@v1.get("/devices", response_model=list[Device])
async def devices(
    conn: ConnDep,
    scope: ScopeDep,
    site: Annotated[str | None, Query(description="Site key")] = None,
    kind: str | None = None,
    status: Annotated[str | None, Query(description="online, offline or fault")] = None,
    lifecycle: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return await q.list_devices(
        conn, scope, site=site, kind=kind, status=status, lifecycle=lifecycle, limit=limit, offset=offset
    )


async def _device(conn: ConnDep, scope: ScopeDep, key: str) -> dict[str, Any]:
    found = await q.get_device(conn, scope, key)
    if found is None:
        raise _not_found("device", key)
    return found


@v1.get("/devices/{key}", response_model=Device, responses={404: {"description": "No such device"}})
async def device(conn: ConnDep, scope: ScopeDep, key: str) -> dict[str, Any]:
    return await _device(conn, scope, key)


@v1.get(
    "/devices/{key}/latest", response_model=DeviceLatest, responses={404: {"description": "No such device"}}
)
async def device_latest(conn: ConnDep, scope: ScopeDep, key: str) -> DeviceLatest:
    """The newest reading of every metric the device has reported."""
    dev = await _device(conn, scope, key)
    rows = await q.latest(conn, dev["id"])
    return DeviceLatest(device=key, values=[LatestValue(**r) for r in rows])


@v1.get(
    "/devices/{key}/series",
    response_model=Series,
    responses={404: {"description": "No such device"}, 422: {"description": "Invalid query"}},
)
async def device_series(
    conn: ConnDep,
    scope: ScopeDep,
    key: str,
    metric: Annotated[str, Query(description="Catalogue metric name, see /api/v1/metrics")],
    start: Annotated[datetime | None, Query(description="Default: end - 24 h. Naive = UTC")] = None,
    end: Annotated[datetime | None, Query(description="Default: now. Naive = UTC")] = None,
    bucket: Annotated[str, Query(description="Bucket width: 30s, 1m, 15m, 1h, 1d, 1w ...")] = "15m",
    agg: Annotated[
        Agg | None, Query(description="Default: avg for gauges, last for counters and states")
    ] = None,
) -> Series:
    """Bucketed values in ``[start, end)``, whole buckets (start rounded down, end up; buckets align to
    midnight UTC). Widths in whole 15 minutes come from ``telemetry_15m``, whole minutes from
    ``telemetry_1m``, others from raw telemetry; buckets the rollup refresh has not reached yet come
    from raw telemetry, so the answer is always current."""
    cat = BY_NAME.get(metric)
    if cat is None:
        raise HTTPException(422, f"unknown metric {metric!r}; the catalogue is at /api/v1/metrics")
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=1)
    try:
        plan = q.plan_series(bucket, start, end)
    except q.InvalidQuery as err:
        raise HTTPException(422, str(err)) from None
    dev = await _device(conn, scope, key)
    chosen: Agg = agg or ("avg" if cat.kind is MetricKind.GAUGE else "last")
    rows, rollup_until = await q.series(conn, dev["id"], cat.id, chosen, plan)
    return Series(
        device=key,
        metric=metric,
        unit=cat.unit,
        agg=chosen,
        bucket=bucket,
        start=plan.start,
        end=plan.end,
        rollup=plan.rollup,
        rollup_until=rollup_until,
        points=[Point(ts=r["ts"], value=r["value"]) for r in rows if r["value"] is not None],
    )


@v1.get("/metrics", response_model=list[Metric])
async def metrics(conn: ConnDep) -> list[dict[str, Any]]:
    """The metric catalogue: canonical names, units and kinds."""
    return await q.list_metrics(conn)


router.include_router(v1)
