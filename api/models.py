"""Response models of the API (what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Agg = Literal["avg", "min", "max", "sum", "last", "count"]


class Town(BaseModel):
    id: int
    key: str
    name_zh: str
    name_en: str


class Site(BaseModel):
    key: str
    name: str
    tenant: str | None = Field(description="Tenant key")
    town: str | None = Field(description="Town key")
    kind: str
    tier: int = Field(description="Orderly-power-use tier: 0 protected, higher tiers limited first")
    feeder: str | None
    latitude: float | None
    longitude: float | None
    device_count: int


class Device(BaseModel):
    key: str
    site: str
    kind: str
    profile: str | None
    vendor: str | None
    model: str | None
    rated_power_w: float | None
    lifecycle: str
    tier: int | None = Field(description="Overrides the site's tier when set")
    attributes: dict[str, Any]
    status: str | None
    status_reason: str | None
    status_at: datetime | None
    last_seen: datetime | None


class Metric(BaseModel):
    id: int
    name: str
    unit: str
    kind: str
    description: str


class LatestValue(BaseModel):
    metric: str
    unit: str
    ts: datetime
    value: float


class DeviceLatest(BaseModel):
    device: str
    values: list[LatestValue]


class Point(BaseModel):
    ts: datetime = Field(description="Start of the bucket")
    value: float


class Series(BaseModel):
    device: str
    metric: str
    unit: str
    agg: Agg
    bucket: str
    start: datetime = Field(description="Start of the first bucket (the requested start, rounded down)")
    end: datetime = Field(description="End of the last bucket (the requested end, rounded up)")
    rollup: str | None = Field(description="Rollup table used for the older buckets, if any")
    rollup_until: datetime | None = Field(
        description="Buckets before this came from the rollup, the rest from raw telemetry"
    )
    points: list[Point]


class Check(BaseModel):
    ok: bool
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Check
    broker: Check
