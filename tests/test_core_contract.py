"""The contract in core/: topics, payloads, catalogue, SunSpec layouts, migrations."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import db, payloads, sunspec, topics
from core.metrics import BY_NAME, CATALOGUE


def test_catalogue_ids_and_names_are_unique() -> None:
    assert len({m.id for m in CATALOGUE}) == len(CATALOGUE)
    assert len({m.name for m in CATALOGUE}) == len(CATALOGUE)


def test_catalogue_ids_are_appended_and_stay_put() -> None:
    ids = [m.id for m in CATALOGUE]
    assert ids == sorted(ids)  # new metrics go at the end
    # Ids stored in telemetry (a few, as witnesses): renumbering would silently relabel history.
    pinned = {"active_power_w": 1, "curtailment_w": 29, "load_raise_w": 35, "max_raisable_w": 36}
    assert {name: BY_NAME[name].id for name in pinned} == pinned
    assert BY_NAME["max_curtailable_w"].id == 37


def test_topic_round_trip() -> None:
    t = topics.topic("xdk-park", "pv-1", topics.Channel.CMD_RESULT, root="r")
    assert t == "r/v1/xdk-park/pv-1/cmd/result"
    assert topics.parse(t, root="r") == topics.TopicAddress("xdk-park", "pv-1", topics.Channel.CMD_RESULT)


@pytest.mark.parametrize(
    "bad", ["r/v1/site/dev", "r/v2/s/d/telemetry", "r/v1/S+/d/telemetry", "r/v1/s/d/nope"]
)
def test_topic_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        topics.parse(bad, root="r")


def test_key_rejects_wildcards() -> None:
    for bad in ("#", "a/b", "+", "Upper", ""):
        with pytest.raises(ValueError):
            topics.check_key(bad)


def test_telemetry_payload_validation() -> None:
    ok = payloads.TelemetryBatch(
        seq=1, samples=[payloads.Sample(ts=datetime(2026, 1, 1, tzinfo=UTC), values={"active_power_w": 1.5})]
    )
    assert payloads.decode(payloads.TelemetryBatch, payloads.encode(ok)) == ok
    for raw in (
        b"{",
        b"[]",
        b'{"seq": -1, "samples": []}',
        b'{"v": 2, "seq": 1, "samples": []}',
        b'{"seq": 1, "samples": [{"ts": "2026-01-01T00:00:00", "values": {"a": 1}}]}',
        b'{"seq": 1, "samples": [{"ts": "2026-01-01T00:00:00Z", "values": {"a": NaN}}]}',
    ):
        with pytest.raises(payloads.PayloadError):
            payloads.decode(payloads.TelemetryBatch, raw)


@given(
    st.sampled_from(
        [m for m in sunspec.model(103).points.values() if m.type in ("int16", "uint16", "acc32")]
    ),
    st.integers(min_value=0, max_value=30000),
)
def test_sunspec_encode_decode_round_trip(point: sunspec.Point, value: int) -> None:
    assert sunspec.decode(point, sunspec.encode(point, value)) == value


def test_sunspec_not_implemented_is_none() -> None:
    w = sunspec.model(103).points["W"]
    assert sunspec.decode(w, sunspec.encode(w, None)) is None
    assert sunspec.scaled(1234, -1) == pytest.approx(123.4)
    assert math.isclose(sunspec.scaled(5, 2) or 0, 500)


def test_sunspec_layouts_match_the_standard_lengths() -> None:
    assert {m: sunspec.model(m).length for m in (1, 103, 120, 123, 203)} == {
        1: 66,
        103: 50,
        120: 26,
        123: 24,
        203: 105,
    }


async def test_migrations_are_idempotent_and_sync_the_catalogue(db_dsn: str) -> None:
    assert await db.migrate(db_dsn) == []
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        cur = await conn.execute("SELECT name FROM metrics ORDER BY id")
        assert [r[0] for r in await cur.fetchall()] == [m.name for m in CATALOGUE]
        cur = await conn.execute("SELECT count(*) FROM towns")
        assert (await cur.fetchone()) == (19,)
        cur = await conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        assert await cur.fetchone() is not None
    assert "active_power_w" in BY_NAME
