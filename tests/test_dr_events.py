"""Events: the model's validation and lifecycle, migration 0010's checks, trigger and audit; settlement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pydantic import ValidationError

from core.dr import event_writes
from core.dr.events import EventKind, EventScope, EventSpec, EventState, Notice, can_transition
from core.dr.resources import Direction
from core.dr.settlement import ResourceSeries, settle

START = datetime(2025, 7, 16, 9, 0, tzinfo=UTC)


def spec(**kw: object) -> EventSpec:
    args: dict[str, object] = dict(
        kind=EventKind.PEAK_SHAVING,
        target_kw=18_000,
        starts_at=START,
        ends_at=START + timedelta(hours=1),
        notice=Notice.DAY_AHEAD,
    )
    args.update(kw)
    return EventSpec.model_validate(args)


def test_event_spec_validation_and_targets() -> None:
    assert spec().target(0).amount_kw == 18_000 and spec().direction is Direction.REDUCE
    assert spec(target_kw=None, cap_kw=50_000).target(53_000).amount_kw == 3000
    valley = spec(kind=EventKind.VALLEY_FILLING, target_kw=None, floor_kw=30_000)
    assert valley.target(26_000).direction is Direction.RAISE and valley.target(26_000).amount_kw == 4000
    for bad in (
        dict(cap_kw=1),  # two amounts
        dict(target_kw=None, floor_kw=1),  # floor for peak shaving
        dict(starts_at=START + timedelta(minutes=5)),
        dict(scope=EventScope.TOWN),  # no town given
        dict(town_id=3),  # a town on a county event
        dict(baseline="guess"),
    ):
        with pytest.raises(ValidationError):
            spec(**bad)
    assert spec(scope=EventScope.SITES, site_ids=[1, 2]).site_ids == [1, 2]


def test_lifecycle() -> None:
    s, a, done, off = EventState.SCHEDULED, EventState.ACTIVE, EventState.COMPLETED, EventState.CANCELLED
    assert (
        can_transition(s, a) and can_transition(a, done) and can_transition(s, off) and can_transition(a, off)
    )
    assert can_transition(s, s)  # an amendment
    assert not any(can_transition(x, y) for x, y in ((a, a), (a, s), (done, a), (off, s), (s, done)))


async def test_migration_enforces_lifecycle_and_audits_every_change(conn: psycopg.AsyncConnection) -> None:
    async with conn.transaction():
        await conn.execute("SET LOCAL lishui.actor = 'grid:test'")
        cur = await conn.execute(
            "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope)"
            " VALUES ('peak_shaving', 18000, %s, %s, 'day_ahead', 'county') RETURNING id",
            (START, START + timedelta(hours=1)),
        )
        row = await cur.fetchone()
        assert row is not None
        event_id = row[0]
    await conn.execute("UPDATE dr_events SET target_kw = 19000 WHERE id = %s", (event_id,))
    await conn.execute("UPDATE dr_events SET state = 'active' WHERE id = %s", (event_id,))
    with pytest.raises(psycopg.errors.RaiseException, match="only a scheduled event"):
        await conn.execute("UPDATE dr_events SET target_kw = 1 WHERE id = %s", (event_id,))
    with pytest.raises(psycopg.errors.RaiseException, match="cannot go from active to scheduled"):
        await conn.execute("UPDATE dr_events SET state = 'scheduled' WHERE id = %s", (event_id,))
    await conn.execute("UPDATE dr_events SET state = 'completed' WHERE id = %s", (event_id,))
    with pytest.raises(psycopg.errors.RaiseException, match="never deleted"):
        await conn.execute("DELETE FROM dr_events WHERE id = %s", (event_id,))
    cur = await conn.execute(
        "SELECT actor, action, (after->>'version')::int FROM dr_event_audit WHERE event_id = %s ORDER BY id",
        (event_id,),
    )
    audit = await cur.fetchall()
    assert [a[1] for a in audit] == ["created", "amended", "activated", "completed"]
    assert audit[0][0] == "grid:test" and [a[2] for a in audit] == [1, 2, 3, 4]

    with pytest.raises(psycopg.errors.CheckViolation, match="dr_events_whole_intervals"):
        await conn.execute(
            "INSERT INTO dr_events (kind, target_kw, starts_at, ends_at, notice, scope)"
            " VALUES ('peak_shaving', 1, %s, %s, 'intraday', 'county')",
            (START + timedelta(minutes=5), START + timedelta(hours=1)),
        )
    with pytest.raises(psycopg.errors.CheckViolation, match="dr_events_cap_is_peak"):
        await conn.execute(
            "INSERT INTO dr_events (kind, cap_kw, starts_at, ends_at, notice, scope)"
            " VALUES ('valley_filling', 1, %s, %s, 'intraday', 'county')",
            (START, START + timedelta(hours=1)),
        )


async def test_the_one_writer_creates_amends_and_cancels_with_its_actor_audited(
    conn: psycopg.AsyncConnection,
) -> None:
    """core.dr.event_writes: what the API and the OpenADR VEN both write events through."""
    assert event_writes.EVENT_FIELDS == tuple(EventSpec.model_fields)
    created = await event_writes.create_event(
        conn, spec().model_dump(), "grid:writer", source="openadr:VTN", external_id=f"e-{START}#0"
    )
    assert (created["state"], created["source"], created["version"]) == ("scheduled", "openadr:VTN", 1)
    event_id = created["id"]
    amended = await event_writes.amend_event(conn, event_id, spec(target_kw=9000).model_dump(), "grid:writer")
    assert amended is not None and (amended["target_kw"], amended["version"]) == (9000, 2)
    cancelled = await event_writes.cancel_event(conn, event_id, "grid:other", "not needed")
    assert cancelled is not None and (cancelled["state"], cancelled["reason"]) == ("cancelled", "not needed")
    assert await event_writes.cancel_event(conn, event_id, "grid:other", "twice") is None  # already over
    assert await event_writes.amend_event(conn, event_id, spec().model_dump(), "grid:writer") is None
    cur = await conn.execute(
        "SELECT actor, action FROM dr_event_audit WHERE event_id = %s ORDER BY id", (event_id,)
    )
    assert await cur.fetchall() == [
        ("grid:writer", "created"),
        ("grid:writer", "amended"),
        ("grid:other", "cancelled"),
    ]
    with pytest.raises(ValueError, match="exactly"):
        await event_writes.create_event(conn, {"kind": "peak_shaving"}, "grid:writer", source="api")


def test_settlement_measures_delivered_against_target_and_per_resource() -> None:
    report = settle(
        Direction.REDUCE,
        [1000, 1000, 1000, 1000],
        {
            # A load curtailed: baseline 800 -> measured 300, after a slow first interval.
            "kiln": ResourceSeries([800] * 4, [600, 300, 300, 300], produces=False, committed_kw=[500] * 4),
            # A battery discharging 500 more than its baseline of charging 100.
            "bess": ResourceSeries([-100] * 4, [400] * 4, produces=True, committed_kw=[500] * 4),
        },
    )
    assert [r.delivered_kw for r in report.intervals] == [700, 1000, 1000, 1000]
    assert report.intervals_below(0.95) == [] and report.intervals_below(0.95, skip_first=0) == [0]
    kiln = next(r for r in report.resources if r.resource_id == "kiln")
    assert kiln.delivered_kwh == pytest.approx(425) and kiln.performance == pytest.approx(425 / 500)
    assert report.delivered_kwh == pytest.approx(925) and report.target_kwh == 1000

    valley = settle(Direction.RAISE, [200], {"bess": ResourceSeries([0], [-250], produces=True)})
    assert valley.intervals[0].delivered_kw == 250
    with pytest.raises(ValueError):
        settle(Direction.REDUCE, [1, 2], {"x": ResourceSeries([1], [1], produces=False)})
