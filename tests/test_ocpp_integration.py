"""Acceptance, end to end: the real central system (``run_ocpp_server`` in-process) and real simulated
piles (``simulators.ocpp``) over real websockets, both OCPP versions, Basic auth, piles registered through
``core.charging.registry``.

- a site limit sent as a ``cmd`` on MQTT lowers the measured charging power of the piles (their
  MeterValues -> TelemetryBatch on MQTT, and the simulator's own power) within one meter-value interval,
  and the power comes back when the limit's validity runs out;
- the lifecycle rule: a pile that is built but not accepted is answered Pending and a violation is
  recorded; once accepted through the registry its next boot is Accepted and it charges;
- an offline period: transaction messages are queued by the pile, replayed on reconnect, and counted
  once (the stored energy of each transaction is exactly the meter difference the pile reported).

The piles' clock runs 60x (a meter value every simulated minute = every real second); the server keeps
real time, which the piles map onto their clock (``server_real_time``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from core import mqtt as core_mqtt
from core.charging import registry
from core.payloads import Command, encode
from core.registry import upsert_site, upsert_tenant
from core.settings import Settings
from core.topics import SITE_TARGET, Channel, subscription, topic
from ocpp_server.settings import OcppSettings
from ocpp_server.testing import Recorder, recording, running_server
from simulators.clock import SimClock
from simulators.ocpp import Pile, PileSpec, run_piles
from simulators.ocpp.physics import Ev

FACTOR = 60.0
METER_S = 60.0  # simulated seconds = 1 real second
METER_REAL_S = METER_S / FACTOR
PILE_W = 7_000.0
TOKEN = "INTEG-TAG-1"


@dataclass
class Site:
    key: str
    settings: Settings
    port: int
    rec: Recorder

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"


def _ev(soc: float = 20.0) -> Ev:
    return Ev(
        capacity_wh=80_000,
        soc_pct=soc,
        target_soc_pct=95.0,
        max_ac_w=PILE_W,
        max_dc_w=90_000,
        departure=datetime.now(UTC) + timedelta(days=2),
        id_token=TOKEN,
    )


def _spec(pid: str, version: str, password: str, **kw: Any) -> PileSpec:
    return PileSpec(
        id=pid,
        version=version,
        password=password,
        max_power_w=PILE_W,
        meter_interval_s=METER_S,
        id_tokens=(TOKEN,),
        **kw,
    )


async def _add(settings: Settings, site: str, pid: str, password: str, lifecycle: str = "accepted") -> None:
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        await registry.add_pile(
            conn,
            pid,
            site,
            max_power_w=PILE_W,
            lifecycle=lifecycle,
            connectors=1,
            password=password,
        )


@pytest_asyncio.fixture
async def site(settings: Settings) -> AsyncIterator[Site]:
    key = f"integ-{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(settings.db.dsn, autocommit=True) as conn:
        await upsert_tenant(conn, f"{key}-op", "integration operator", "operator")
        await upsert_site(conn, key, "integration site", f"{key}-op", "xiaodukou", "charging")
        await registry.add_token(conn, TOKEN)
    cfg = OcppSettings(
        node=f"{key}-node", call_timeout_s=5, ping_interval_s=0, pending_retry_s=1, heartbeat_interval_s=60
    )
    root = settings.topic_root
    async with (
        recording(settings, subscription(Channel.TELEMETRY, root, site=key)) as rec,
        running_server(settings, cfg) as port,
    ):
        yield Site(key, settings, port, rec)


def _powers(rec: Recorder, device: str, since: int = 0) -> list[float]:
    out: list[float] = []
    for t, body, _ in rec.messages[since:]:
        if t.split("/")[-2] == device:
            out += [s["values"]["active_power_w"] for s in body["samples"] if "active_power_w" in s["values"]]
    return out


async def _telemetry_power(rec: Recorder, device: str, ok: Any, since: int, within_s: float) -> float:
    """The first reported power of ``device`` after message ``since`` that satisfies ``ok``."""
    async with asyncio.timeout(within_s):
        while True:
            hits = [w for w in _powers(rec, device, since) if ok(w)]
            if hits:
                return hits[0]
            await asyncio.sleep(0.02)


def _charging_at(p: Pile, watts: float) -> bool:
    s = p.session()
    return (
        s is not None and s.tx_id is not None and not p.txq and p.power_w() == pytest.approx(watts, rel=0.01)
    )


async def _charging(piles: list[Pile], watts: float, within_s: float = 15.0) -> None:
    """Every pile's session is started on the server (a transaction id) and draws ``watts``."""
    for p in piles:
        await p.wait_for(lambda p=p: _charging_at(p, watts), within_s)  # type: ignore[misc]


async def _send_site_command(settings: Settings, site: str, cmd: Command) -> None:
    async with core_mqtt.client(settings.mqtt, f"integ-cmd-{uuid.uuid4().hex[:6]}") as client:
        await client.publish(topic(site, SITE_TARGET, Channel.CMD, settings.topic_root), encode(cmd), qos=1)


async def test_site_limit_lowers_measured_power_and_expires(site: Site) -> None:
    """Two 1.6J and two 2.0.1 piles charging at 7 kW; a 10 kW site limit for 6 s: each drops to its 2.5 kW
    share within one meter interval (in the simulator and in the telemetry), then returns to 7 kW."""
    pw = "integ-pile-password-1"
    specs = [_spec(f"{site.key}-{v.replace('.', '')}-{i}", v, pw) for v in ("1.6", "2.0.1") for i in (1, 2)]
    for s in specs:
        await _add(site.settings, site.key, s.id, pw)
    async with run_piles(specs, site.url(), clock=SimClock(FACTOR), server_real_time=True) as fleet:
        await fleet.wait_accepted(within_s=15)
        piles = list(fleet)
        for p in piles:
            p.plug_in(ev=_ev())
        await _charging(piles, PILE_W)
        for p in piles:  # the telemetry shows them charging at full power
            await _telemetry_power(site.rec, p.spec.id, lambda w: w >= PILE_W * 0.99, 0, 5 * METER_REAL_S + 3)

        hold_s, limit_w = 6.0, 10_000.0
        share = limit_w / len(piles)
        t0 = time.monotonic()
        await _send_site_command(
            site.settings,
            site.key,
            Command(id="integ-limit", op="set_site_charging_limit", args={"watts": limit_w}, hold_s=hold_s),
        )
        async with asyncio.timeout(5):  # the shares reach the piles
            while not all(p.power_w() <= share * 1.01 for p in piles):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        applied = time.monotonic()
        assert applied - t0 < 3.0
        since = len(site.rec.messages)
        for p in piles:
            assert p.power_w() == pytest.approx(share, rel=0.01)
            assert p.limit_w(1) == pytest.approx(share, rel=0.01)
            # the next meter value after the limit arrived reports it: within one interval (+ transit)
            low = await _telemetry_power(
                site.rec, p.spec.id, lambda w: w <= share * 1.01, since, METER_REAL_S + 1.0
            )
            assert low == pytest.approx(share, rel=0.01)
        assert sum(p.power_w() for p in piles) <= limit_w * 1.01

        # the limit's validity runs out: the piles fall back by themselves, and report it
        remaining = hold_s - (time.monotonic() - t0)
        async with asyncio.timeout(remaining + 3 * METER_REAL_S + 2):
            while not all(p.power_w() >= PILE_W * 0.99 for p in piles):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert time.monotonic() - t0 >= hold_s - 0.5  # not before the validity ended
        since = len(site.rec.messages)
        for p in piles:
            await _telemetry_power(
                site.rec, p.spec.id, lambda w: w >= PILE_W * 0.99, since, METER_REAL_S + 1.5
            )


async def test_lifecycle_pending_then_accepted(site: Site) -> None:
    """A built pile is answered Pending (violation recorded); accepted through the registry, its next boot is
    Accepted and it charges."""
    pw = "integ-pile-password-2"
    specs = [_spec(f"{site.key}-life-{v.replace('.', '')}", v, pw) for v in ("1.6", "2.0.1")]
    for s in specs:
        await _add(site.settings, site.key, s.id, pw, lifecycle="built")
    async with run_piles(specs, site.url(), clock=SimClock(FACTOR), server_real_time=True) as fleet:
        for p in fleet:
            await p.wait_for(lambda p=p: p.state == "Pending", 10)
        async with await psycopg.AsyncConnection.connect(site.settings.db.dsn, autocommit=True) as conn:
            for s in specs:
                rows = await registry.list_violations(conn, pile=s.id)
                assert [r["kind"] for r in rows] == ["operating_before_acceptance"]
                assert rows[0]["details"]["answer"] == "Pending"
            assert fleet.accepted == 0
            for s in specs:
                await registry.transition(conn, s.id, "accept")
        await fleet.wait_accepted(within_s=10)  # the retry after pending_retry_s
        piles = list(fleet)
        for p in piles:
            p.plug_in(ev=_ev())
        await _charging(piles, PILE_W)
        async with await psycopg.AsyncConnection.connect(site.settings.db.dsn, autocommit=True) as conn:
            for s in specs:
                pile = await registry.get_pile(conn, s.id)
                assert pile["lifecycle"] == "operating"
                assert pile["last_boot_status"] == "Accepted"
                cur = await conn.execute(
                    "SELECT count(*) FROM charging_transactions t JOIN devices d ON d.id = t.device_id"
                    " WHERE d.key = %s AND t.status = 'active'",
                    (s.id,),
                )
                assert (await cur.fetchone()) == (1,)


async def test_offline_queue_replayed_once(site: Site) -> None:
    """Charging piles lose the network for 3 s and are unplugged meanwhile: the queued meter values and the
    stop are replayed after the reconnect, and each transaction's energy is exactly what the pile metered."""
    pw = "integ-pile-password-3"
    specs = [_spec(f"{site.key}-off-{v.replace('.', '')}", v, pw) for v in ("1.6", "2.0.1")]
    for s in specs:
        await _add(site.settings, site.key, s.id, pw)
    async with run_piles(specs, site.url(), clock=SimClock(FACTOR), server_real_time=True) as fleet:
        await fleet.wait_accepted(within_s=10)
        piles = list(fleet)
        for p in piles:
            p.sent_tx = []
            p.plug_in(ev=_ev())
        await _charging(piles, PILE_W)
        await asyncio.sleep(2 * METER_REAL_S)
        for p in piles:
            p.go_offline(3.0)
        await asyncio.sleep(1.5)
        for p in piles:
            assert p.session() is not None and not p.online
            p.unplug(1)
            assert p.txq, "messages are queued while offline"
        await fleet.wait_accepted(within_s=15)
        for p in piles:
            await p.wait_for(lambda p=p: not p.txq, 10)
            assert p.counters.replayed > 0
        async with await psycopg.AsyncConnection.connect(site.settings.db.dsn, autocommit=True) as conn:
            for p in piles:
                stop = p.sent_tx[-1] if p.sent_tx else None
                assert stop is not None and stop.kind == "stop" and stop.offline
                session = stop.session
                cur = await conn.execute(
                    "SELECT t.status, t.meter_start_wh, t.meter_stop_wh, t.energy_wh"
                    " FROM charging_transactions t JOIN devices d ON d.id = t.device_id WHERE d.key = %s",
                    (p.spec.id,),
                )
                rows = await cur.fetchall()
                assert len(rows) == 1, rows  # one transaction, not a replayed duplicate
                status, start_wh, stop_wh, energy = rows[0]
                assert status == "ended"
                assert start_wh == session.meter_start_wh
                assert stop_wh == stop.meter_wh
                assert energy == stop.meter_wh - session.meter_start_wh
                assert energy > 0
