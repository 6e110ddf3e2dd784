"""Forecasts under /api/v1/forecasts: issue day-ahead forecasts (load per site and county, PV from clear
sky and an optional cloud-cover input), read them, report their error once the day is over, and the
day-ahead capacity register.

Days are local (Asia/Shanghai) calendar days; a series is 96 values, the mean kW of each 15-minute
interval from ``starts_at``. Bad input is a 4xx: a malformed body or query is 422, a day that is not
over yet has no error report (409), a day with nothing issued is 404.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.deps import ConnDep
from core.dr.baselines import SLOT_MIN, SLOTS_PER_DAY, Calendar
from core.dr.forecast import cloud_slots, slot_start
from core.dr.forecast_capacity import NoWindow, day_ahead_register
from core.dr.forecast_store import (
    NotOver,
    StoredSeries,
    error_report,
    issue_day_ahead,
    local_today,
    read_forecasts,
)

router = APIRouter(prefix="/api/v1/forecasts", tags=["forecasts"])

MAX_DAYS_AHEAD = 7
EARLIEST = date(2000, 1, 1)
Kind = Literal["load", "pv"]
DayQuery = Annotated[date, Query(description="Local (Asia/Shanghai) calendar day, YYYY-MM-DD")]


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_day: date | None = Field(None, description="Local day to forecast; default tomorrow")
    cloud_cover: list[float] | None = Field(
        None,
        description="Forecast cloud cover of the target day, 0 clear .. 1 overcast: 24 hourly or 96"
        " quarter-hourly values (local time). Without it PV uses the recent typical clear-sky index.",
    )
    holidays: list[date] = Field(default_factory=list, max_length=400)
    make_up_workdays: list[date] = Field(default_factory=list, max_length=400, description="调休 workdays")

    @field_validator("cloud_cover")
    @classmethod
    def _cloud(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            cloud_slots(value)  # raises ValueError with the reason: a 422
        return value

    @model_validator(mode="after")
    def _day(self) -> ForecastRequest:
        if self.target_day is not None:
            latest = local_today() + timedelta(days=MAX_DAYS_AHEAD)
            if not EARLIEST <= self.target_day <= latest:
                raise ValueError(f"target_day must lie between {EARLIEST} and {latest}")
        return self

    def calendar(self) -> Calendar:
        return Calendar(frozenset(self.holidays), frozenset(self.make_up_workdays))


class CountySummary(BaseModel):
    peak_kw: float
    peak_at: datetime
    energy_kwh: float
    sites: int


class IssuedOut(BaseModel):
    issued_at: datetime
    target_day: date
    series: int = Field(description="Series stored, county included")
    county_load: CountySummary | None
    county_pv: CountySummary | None
    skipped: dict[str, str] = Field(description="'site/kind' -> why it has no forecast")


class SeriesOut(BaseModel):
    site: str | None = Field(description="Site key; null for the county (the sum of the site series)")
    town: str | None
    kind: Kind
    method: str
    issued_at: datetime
    target_day: date
    starts_at: datetime = Field(description="Start of the first interval (local midnight)")
    interval_min: int = SLOT_MIN
    kw: list[float]
    detail: dict[str, Any]


class ErrorOut(BaseModel):
    site: str | None
    town: str | None
    kind: Kind
    method: str
    issued_at: datetime
    day_ahead: bool = Field(description="Issued before the day began")
    mape_pct: float | None = Field(description="Load only: over intervals with non-zero actual load")
    nmae_pct: float | None = Field(
        description="Load: MAE / mean actual load; PV: MAE over daylight intervals / rated power"
    )
    bias_pct: float | None = Field(description="Mean (forecast - actual) on the nmae normalizer")
    intervals: int = Field(description="Intervals compared")
    forecast_kw: list[float] | None = None
    actual_kw: list[float | None] | None = None


class ErrorReportOut(BaseModel):
    day: date
    series: list[ErrorOut]


class DayAheadCapacityOut(BaseModel):
    day: date
    starts_at: datetime
    ends_at: datetime
    window_source: str = Field(description="'given', or 'forecast peak' of the county load forecast")
    total_kw: float
    aim_kw: float
    meets_aim: bool
    resources: int
    towns: dict[str, dict[str, float]] = Field(description="town key -> resource kind -> kW for the window")
    excluded: dict[str, str] = Field(description="device key -> why it is not counted")
    county_load_kw: float | None = Field(description="County load forecast, mean over the window")
    county_pv_kw: float | None = Field(description="County PV forecast, mean over the window")


def _check_day(day: date) -> date:
    latest = local_today() + timedelta(days=MAX_DAYS_AHEAD)
    if not EARLIEST <= day <= latest:
        raise HTTPException(422, f"day must lie between {EARLIEST} and {latest}")
    return day


def _summary(kw: Any, day: date, sites: int) -> CountySummary:
    values = [float(v) for v in kw]
    peak = max(range(SLOTS_PER_DAY), key=values.__getitem__)
    return CountySummary(
        peak_kw=values[peak],
        peak_at=slot_start(day, peak),
        energy_kwh=sum(values) * SLOT_MIN / 60,
        sites=sites,
    )


def _series_out(s: StoredSeries) -> SeriesOut:
    return SeriesOut(
        site=s.site,
        town=s.town,
        kind=s.kind,
        method=s.method,
        issued_at=s.issued_at,
        target_day=s.target_day,
        starts_at=slot_start(s.target_day, 0),
        kw=s.kw,
        detail=s.detail,
    )


@router.post("", response_model=IssuedOut, status_code=status.HTTP_201_CREATED)
async def issue(body: ForecastRequest, conn: ConnDep) -> IssuedOut:
    """Issue day-ahead forecasts of a day (default tomorrow) for every site and the county, from the
    history before that day, and store them."""
    day = body.target_day or local_today() + timedelta(days=1)
    issued = await issue_day_ahead(conn, day, body.cloud_cover, body.calendar())
    load, pv = issued.county("load"), issued.county("pv")
    return IssuedOut(
        issued_at=issued.issued_at,
        target_day=day,
        series=len(issued.series),
        county_load=_summary(load.kw, day, len(load.detail["sites"])) if load else None,
        county_pv=_summary(pv.kw, day, len(pv.detail["sites"])) if pv else None,
        skipped=issued.skipped,
    )


@router.get("", response_model=list[SeriesOut])
async def get_forecasts(
    conn: ConnDep,
    day: DayQuery,
    kind: Annotated[Kind | None, Query()] = None,
    site: Annotated[str | None, Query(max_length=64, description="A site key")] = None,
    county: Annotated[bool, Query(description="Only the county series")] = False,
) -> list[SeriesOut]:
    """The latest issued series of a day, the county first."""
    _check_day(day)
    rows = await read_forecasts(conn, day, kind, site, county)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no forecast issued for {day} matches")
    return [_series_out(s) for s in rows]


@router.get("/error", response_model=ErrorReportOut)
async def get_error(
    conn: ConnDep,
    day: DayQuery,
    kind: Annotated[Kind | None, Query()] = None,
    site: Annotated[str | None, Query(max_length=64, description="A site key")] = None,
    county: Annotated[bool, Query(description="Only the county series")] = False,
    series: Annotated[bool, Query(description="Include the forecast and actual series")] = False,
) -> ErrorReportOut:
    """Each latest series of a past day against what then happened (telemetry of the same devices)."""
    _check_day(day)
    try:
        rows = await error_report(conn, day)
    except NotOver as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
    rows = [
        r
        for r in rows
        if (kind is None or r.series.kind == kind)
        and (site is None or r.series.site == site)
        and (not county or r.series.site_id is None)
    ]
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no forecast issued for {day} matches")
    day_start = slot_start(day, 0)
    return ErrorReportOut(
        day=day,
        series=[
            ErrorOut(
                site=r.series.site,
                town=r.series.town,
                kind=r.series.kind,
                method=r.series.method,
                issued_at=r.series.issued_at,
                day_ahead=r.series.issued_at < day_start,
                mape_pct=r.error.mape_pct,
                nmae_pct=r.error.nmae_pct,
                bias_pct=r.error.bias_pct,
                intervals=r.error.slots,
                forecast_kw=r.series.kw if series else None,
                actual_kw=r.actual_kw if series else None,
            )
            for r in rows
        ],
    )


@router.get("/capacity", response_model=DayAheadCapacityOut)
async def get_capacity(
    conn: ConnDep,
    day: Annotated[date | None, Query(description="Local day; default tomorrow")] = None,
    start: Annotated[
        str | None,
        Query(
            pattern=r"^([01]\d|2[0-3]):(00|15|30|45)$",
            description="Window start, local HH:MM on the quarter hour; default the county forecast's peak",
        ),
    ] = None,
    duration_min: Annotated[int, Query(ge=SLOT_MIN, le=24 * 60, multiple_of=SLOT_MIN)] = 60,
) -> DayAheadCapacityOut:
    """Peak-shaving capacity per town and total for a window of a coming day, against the 18 MW aim."""
    day = _check_day(day or local_today() + timedelta(days=1))
    slots = duration_min // SLOT_MIN
    start_slot = None
    if start is not None:
        hours, minutes = map(int, start.split(":"))
        start_slot = (hours * 60 + minutes) // SLOT_MIN
        if start_slot + slots > SLOTS_PER_DAY:
            raise HTTPException(422, "the window must end by midnight")
    try:
        reg = await day_ahead_register(conn, day, start_slot, slots)
    except NoWindow as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
    return DayAheadCapacityOut(
        day=day,
        starts_at=reg.starts_at,
        ends_at=reg.ends_at,
        window_source=reg.window_source,
        total_kw=reg.register.total_kw,
        aim_kw=reg.register.aim_kw,
        meets_aim=reg.register.total_kw >= reg.register.aim_kw,
        resources=reg.register.resources,
        towns=reg.register.towns,
        excluded=reg.register.excluded,
        county_load_kw=reg.county_load_kw,
        county_pv_kw=reg.county_pv_kw,
    )
