"""Profile stack limits (unit + hypothesis) and EV physics of the OCPP pile simulators (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.clock import SimClock
from simulators.ocpp import Electrical, Ev, FleetStats, Period, PileSpec, Profile, ProfileStack, Purpose
from simulators.ocpp.fleet import make_pile
from simulators.ocpp.physics import arrival_shape, charging_power_w, next_arrival
from simulators.ocpp.profiles import parse_profile

T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


def prof(pid: int, purpose: Purpose, limit: float, level: int = 0, unit: str = "W", **kw: Any) -> Profile:
    return Profile(
        id=pid,
        stack_level=level,
        purpose=purpose,
        unit=unit,  # type: ignore[arg-type]
        periods=(Period(0, limit),),
        start_schedule=kw.pop("start", T0),
        **kw,
    )


def test_no_profile_no_limit() -> None:
    assert ProfileStack().limit_w(1, T0) is None


def test_tx_overrides_default_and_station_caps() -> None:
    s = ProfileStack()
    s.install(0, prof(1, Purpose.TX_DEFAULT, 11_000))
    s.install(1, prof(2, Purpose.TX_DEFAULT, 9_000))
    assert s.limit_w(1, T0) == 9_000  # connector default beats connector 0's
    assert s.limit_w(2, T0) == 11_000
    s.install(1, prof(3, Purpose.TX, 20_000, transaction_id="t1"))
    assert s.limit_w(1, T0, tx_start=T0, tx_id="t1") == 20_000  # TxProfile beats the default
    assert s.limit_w(1, T0, tx_start=T0, tx_id="other") == 9_000
    s.install(0, prof(4, Purpose.STATION_MAX, 15_000))
    assert s.limit_w(1, T0, tx_start=T0, tx_id="t1") == 15_000
    s.end_transaction(1)
    assert s.limit_w(1, T0, tx_start=T0, tx_id="t1") == 9_000


def test_stack_level_and_expiry_fall_back() -> None:
    s = ProfileStack()
    s.install(0, prof(1, Purpose.TX_DEFAULT, 7_000, level=0))
    s.install(0, prof(2, Purpose.TX_DEFAULT, 3_000, level=2, duration_s=600.0))
    s.install(0, prof(3, Purpose.TX_DEFAULT, 5_000, level=1, valid_to=T0 + timedelta(hours=1)))
    assert s.limit_w(1, T0) == 3_000
    assert s.limit_w(1, T0 + timedelta(minutes=11)) == 5_000  # level 2's schedule ended
    assert s.limit_w(1, T0 + timedelta(hours=2)) == 7_000  # level 1 expired
    s.install(0, prof(9, Purpose.TX_DEFAULT, 4_000, level=2))  # same level + purpose replaces id 2
    assert {p.id for _, p in s.all()} == {1, 3, 9}
    assert s.prune(T0 + timedelta(hours=2)) == 1
    assert s.clear(purpose=Purpose.TX_DEFAULT) == 2 and s.limit_w(1, T0) is None


def test_amperes_periods_relative_and_recurring() -> None:
    s = ProfileStack(Electrical(230.0, 3))
    p = Profile(1, 0, Purpose.TX_DEFAULT, "A", (Period(0, 16), Period(3600, 32, phases=1)), kind="Relative")
    s.install(1, p)
    start = T0 + timedelta(minutes=5)
    assert s.limit_w(1, start, tx_start=start) == pytest.approx(16 * 230 * 3)
    assert s.limit_w(1, start + timedelta(hours=2), tx_start=start) == pytest.approx(32 * 230)
    assert s.limit_w(1, start) is None  # relative, no transaction: nothing applies
    night = Profile(
        2,
        0,
        Purpose.STATION_MAX,
        "W",
        (Period(0, 2_000), Period(6 * 3600, 50_000)),
        kind="Recurring",
        recurrency="Daily",
        start_schedule=T0.replace(hour=0),
    )
    s.install(0, night)
    assert s.station_limit_w(T0.replace(hour=3) + timedelta(days=3)) == 2_000
    assert s.station_limit_w(T0.replace(hour=12) + timedelta(days=3)) == 50_000
    comp = s.composite(0, T0.replace(hour=0), 86_400, 60_000)
    assert comp == [(0.0, 2_000), (6 * 3600.0, 50_000)]


def test_parse_1_6_payload_with_decimals() -> None:
    from decimal import Decimal

    raw = {
        "charging_profile_id": 5,
        "stack_level": 1,
        "charging_profile_purpose": "ChargePointMaxProfile",
        "charging_profile_kind": "Absolute",
        "valid_to": "2025-06-01T09:00:00Z",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "start_schedule": "2025-06-01T08:00:00Z",
            "charging_schedule_period": [{"start_period": 0, "limit": Decimal("10.5")}],
        },
    }
    p = parse_profile(raw, schedule=raw["charging_schedule"], installed_at=T0)  # type: ignore[arg-type]
    assert p.purpose == Purpose.STATION_MAX and p.unit == "A" and p.periods[0].limit == 10.5
    assert p.valid_to == T0 + timedelta(hours=1)


PURPOSES = st.sampled_from([Purpose.STATION_MAX, Purpose.TX_DEFAULT, Purpose.TX, Purpose.EXTERNAL])
profile_st = st.builds(
    lambda purpose, limit, start_off, dur, valid_to_off, level, amps: (
        purpose,
        Profile(
            0,
            level,
            purpose,
            "A" if amps else "W",
            (Period(0, limit / 690 if amps else limit),),
            start_schedule=T0 + timedelta(seconds=start_off),
            duration_s=dur,
            valid_to=None if valid_to_off is None else T0 + timedelta(seconds=valid_to_off),
        ),
    ),
    PURPOSES,
    st.floats(0, 200_000),
    st.integers(-3600, 3600),
    st.none() | st.floats(1, 7200),
    st.none() | st.integers(-3600, 7200),
    st.integers(0, 8),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(profile_st, max_size=6), st.integers(0, 10_800), st.floats(1_000, 150_000))
def test_limit_never_exceeds_applicable_profiles_or_pile_max(
    profiles: list[tuple[Purpose, Profile]], at_s: int, pile_max: float
) -> None:
    spec = PileSpec(id="hyp", max_power_w=pile_max, voltage_v=230, phases=3)
    pile = make_pile(spec, "ws://unused", SimClock(0, T0), FleetStats())
    tx_start = T0
    pile.connectors[0].session = None
    for i, (purpose, p) in enumerate(profiles):
        p = Profile(
            i + 1,
            p.stack_level,
            p.purpose,
            p.unit,
            p.periods,
            start_schedule=p.start_schedule,
            duration_s=p.duration_s,
            valid_to=p.valid_to,
        )
        pile.profiles.install(0 if purpose in (Purpose.STATION_MAX, Purpose.EXTERNAL) else 1, p)
    now = T0 + timedelta(seconds=at_s)
    limit = pile.limit_w(1, at=now)
    assert 0 <= limit <= pile_max + 1e-6
    e = pile.profiles.electrical
    in_force = [
        (purpose, p, e.to_w(p.periods[0].limit, p.unit))
        for cid, p in pile.profiles.all()
        for purpose in [p.purpose]
        if p.period_at(now, tx_start) is not None and purpose != Purpose.TX  # no transaction running
    ]
    # Station caps always bound the result; with one profile per purpose the result is their minimum.
    for purpose, _, _w in in_force:
        if purpose in (Purpose.STATION_MAX, Purpose.EXTERNAL):
            top = max((p.stack_level for q, p, _ in in_force if q == purpose), default=0)
            assert limit <= max(w2 for q, p, w2 in in_force if q == purpose and p.stack_level == top) + 1e-6
    if not in_force:
        assert limit == pytest.approx(pile_max)  # everything expired or not started: the pile's own max
    purposes = [q for q, _, _ in in_force]
    if len(purposes) == len(set(purposes)):
        assert limit == pytest.approx(min([pile_max] + [w for _, _, w in in_force]))


def ev(soc: float = 20.0, target: float = 100.0) -> Ev:
    return Ev(
        capacity_wh=50_000,
        soc_pct=soc,
        target_soc_pct=target,
        max_ac_w=7_000,
        max_dc_w=100_000,
        departure=T0 + timedelta(days=1),
        id_token="T",
    )


def test_taper_above_80_percent() -> None:
    car = ev()
    assert car.acceptance_w(dc=True) == 100_000
    car.soc_pct = 90
    assert 0 < car.acceptance_w(dc=True) < 100_000
    car.soc_pct = 100
    assert car.acceptance_w(dc=True) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 99),
    st.floats(1_000, 150_000),
    st.none() | st.floats(0, 200_000),
    st.booleans(),
    st.lists(st.floats(1, 900), min_size=1, max_size=20),
)
def test_power_bounded_and_soc_monotonic(
    soc: float, pile_max: float, limit: float | None, dc: bool, steps: list[float]
) -> None:
    car = ev(soc)
    prev = car.soc_pct
    for dt in steps:
        p = charging_power_w(car, dc, pile_max, limit)
        assert 0 <= p <= min(car.acceptance_w(dc), pile_max, limit if limit is not None else float("inf"))
        car.absorb(p, dt)
        assert prev <= car.soc_pct <= 100.0
        prev = car.soc_pct


async def test_pile_physics_shares_station_cap_and_integrates_energy() -> None:
    clock = SimClock(0, T0)
    pile = make_pile(
        PileSpec(id="dc", fast=True, connectors=2, max_power_w=120_000, connector_max_w=90_000),
        "ws://unused",
        clock,
        FleetStats(),
    )
    c1, c2 = pile.connectors
    pile.start_session(c1, ev(), "A")
    pile.start_session(c2, ev(), "B")
    for c in (c1, c2):
        assert c.session is not None
    assert pile.power_w() == pytest.approx(120_000)  # 2 x 90 kW wanted, the pile's 120 kW shared
    assert c1.power_w == pytest.approx(60_000)
    socs = []
    for _ in range(40):
        clock.advance(60)
        pile.advance(clock.now())
        socs.append(c1.session.ev.soc_pct if c1.session else 100.0)
        assert pile.power_w() <= 120_000 + 1e-6
    assert socs == sorted(socs)
    assert c1.energy_wh > 0 and c1.energy_wh == pytest.approx(c2.energy_wh)
    pile.txq.clear()
    for t in list(pile._tasks):
        t.cancel()


def test_arrivals_follow_rate_and_daily_shape() -> None:
    import random

    # Mean of the shape over a day is 1.
    hours = [arrival_shape(T0.replace(hour=0) + timedelta(minutes=m)) for m in range(0, 1440, 5)]
    assert sum(hours) / len(hours) == pytest.approx(1.0, rel=0.02)
    rng = random.Random(1)
    t, n = T0, 0
    end = T0 + timedelta(days=50)
    while True:
        nxt = next_arrival(t, 10.0, rng)
        assert nxt is not None and nxt > t
        if nxt > end:
            break
        t, n = nxt, n + 1
    assert 450 < n < 550
    assert next_arrival(T0, 0.0, rng) is None
