"""A simulated charge point, version-neutral: connection life, EVs on connectors, physics, the offline
queue, smart charging state, and the test hooks. ``v16.Pile16`` and ``v201.Pile201`` add the messages.

Per pile there is one long-lived task (the connection: connect, receive, reconnect). Timers
(heartbeat, meter values, arrivals, departures) are ``loop.call_later`` handles, and each due action
runs as a short task; transaction messages go through an ordered queue that one short task drains
while the pile is online and accepted, so a pile that was offline replays them in order.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from simulators.clock import SimClock
from simulators.ocpp.physics import MAX_SUBSTEP_S, Ev, charging_power_w, next_arrival, random_ev
from simulators.ocpp.profiles import Electrical, Profile, ProfileStack
from simulators.ocpp.spec import PileSpec
from simulators.physics.randomness import stable_seed

if TYPE_CHECKING:
    from simulators.ocpp.base import FastCallMixin

LOG = logging.getLogger("simulators.ocpp")

DEFAULT_HEARTBEAT_S = 300.0
DEFAULT_BOOT_RETRY_S = 10.0
STEP_DELAY_S = 0.2  # real seconds between firmware/log status steps
TxKind = Literal["start", "update", "stop"]
ConnState = Literal["disconnected", "connecting", "booting", "Pending", "Rejected", "Accepted"]


class FleetStats:
    """Counters shared by all piles of a fleet; when recording, each answered call's latency (seconds,
    frame sent -> answer received) and its send time (``time.perf_counter``, the monotonic clock every
    process shares, so slow calls can be lined up with other processes' stalls)."""

    __slots__ = ("latencies", "received", "recording", "sent", "sent_at")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.latencies: list[float] = []
        self.sent_at: list[float] = []
        self.recording = False

    def record_latency(self, sent_at: float, seconds: float) -> None:
        if self.recording:
            self.latencies.append(seconds)
            self.sent_at.append(sent_at)

    def clear(self) -> None:
        self.latencies.clear()
        self.sent_at.clear()


@dataclass(slots=True)
class Session:
    connector_id: int
    ev: Ev
    id_token: str
    started_at: datetime
    meter_start_wh: int
    tx_id: str | None = None  # 1.6: from StartTransaction.conf; 2.0.1: ours
    seq_no: int = 0  # 2.0.1
    remote_start_id: int | None = None
    stop_reason: str | None = None
    ended: bool = False
    energy_wh: float = 0.0


@dataclass(slots=True)
class TxMessage:
    kind: TxKind
    session: Session
    ts: datetime
    meter_wh: int
    power_w: float
    soc_pct: float
    offline: bool
    seq_no: int = 0
    trigger: str = "MeterValuePeriodic"
    reason: str | None = None


@dataclass(slots=True)
class Connector:
    id: int
    energy_wh: float = 0.0  # lifetime import register
    power_w: float = 0.0
    session: Session | None = None
    ev: Ev | None = None  # plugged in (maybe not yet authorised)
    operative: bool = True
    pending_inoperative: bool = False
    status: str = "Available"  # 1.6 ChargePointStatus vocabulary; 2.0.1 maps it
    reported: str | None = None


@dataclass(slots=True)
class PileCounters:
    connects: int = 0
    boots: int = 0
    sessions: int = 0
    auth_rejected: int = 0
    lost_arrivals: int = 0
    replayed: int = 0
    tx_errors: int = 0


@dataclass
class Config:
    """1.6 configuration keys (2.0.1 maps its variables onto the same values)."""

    values: dict[str, str] = field(default_factory=dict)
    readonly: set[str] = field(default_factory=set)


class Pile:
    """Abstract: the version subclasses implement the ``_send_*`` methods and ``make_cp``."""

    version: str = ""

    def __init__(self, spec: PileSpec, url: str, clock: SimClock, stats: FleetStats) -> None:
        self.spec = spec
        self.url = url.rstrip("/") + "/" + spec.id
        self.clock = clock
        self.fleet_stats = stats
        self.rng = random.Random(spec.seed if spec.seed is not None else stable_seed("pile", spec.id))
        self.connectors = [Connector(i + 1) for i in range(spec.connectors)]
        self.profiles = ProfileStack(Electrical(spec.volts, spec.n_phases))
        self.state: ConnState = "disconnected"
        self.heartbeat_interval = DEFAULT_HEARTBEAT_S
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.call_errors = 0
        self.counters = PileCounters()
        self.txq: deque[TxMessage] = deque()
        self.sent_tx: list[TxMessage] | None = None  # set to [] to keep what was sent (tests)
        self.local_list: dict[str, str] = {}
        self.local_list_version = 0
        self.config = self._default_config()
        self.last_error: str | None = None
        self.cp: FastCallMixin | None = None
        self.ws: ClientConnection | None = None
        self.boot_reason = "PowerUp"
        self._t = clock.now()  # physics stepped up to here
        self._offline_until = 0.0
        self._flushing = False
        self._boot_now = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._stopped = False
        self._next_local_id = 1
        # The central system keeps real time (a real one does): its absolute times and durations in
        # charging profiles are mapped onto the simulated clock, so a limit valid for 20 real seconds
        # lasts 20 real seconds whatever the time factor. False: the central system shares our clock.
        self.server_real_time = False

    # -- to implement per version -----------------------------------------------------------------

    def make_cp(self, ws: ClientConnection) -> FastCallMixin:
        raise NotImplementedError

    async def _send_boot(self) -> tuple[str, float]:
        raise NotImplementedError

    async def _send_heartbeat(self) -> None:
        raise NotImplementedError

    async def _send_status(self, connector: Connector | None) -> None:
        raise NotImplementedError

    async def _send_authorize(self, token: str) -> bool:
        raise NotImplementedError

    async def _send_tx(self, msg: TxMessage) -> None:
        raise NotImplementedError

    async def _send_idle_meter_values(self, connector: Connector) -> None:
        raise NotImplementedError

    async def _send_firmware_status(self, status: str, request_id: int | None) -> None:
        raise NotImplementedError

    async def _send_log_status(self, status: str, request_id: int | None) -> None:
        raise NotImplementedError

    def _default_config(self) -> Config:
        s = self.spec
        return Config(
            values={
                "HeartbeatInterval": str(int(DEFAULT_HEARTBEAT_S)),
                "MeterValueSampleInterval": str(int(s.meter_interval_s)),
                "NumberOfConnectors": str(s.connectors),
                "AuthorizeRemoteTxRequests": "false",
                "LocalAuthorizeOffline": "true",
                "LocalAuthListEnabled": "true",
                "LocalAuthListMaxLength": "1000",
                "SendLocalListMaxLength": "1000",
                "AllowOfflineTxForUnknownId": "true" if s.offline_tx else "false",
                "ConnectionTimeOut": "60",
                "MeterValuesSampledData": (
                    "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC"
                ),
                "StopTransactionOnEVSideDisconnect": "true",
                "ChargeProfileMaxStackLevel": str(self.profiles.max_stack_level),
                "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
                "ChargingScheduleMaxPeriods": "48",
                "MaxChargingProfilesInstalled": "32",
                "SupportedFeatureProfiles": (
                    "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging"
                ),
            },
            readonly={
                "NumberOfConnectors",
                "SupportedFeatureProfiles",
                "ChargeProfileMaxStackLevel",
                "ChargingScheduleAllowedChargingRateUnit",
                "ChargingScheduleMaxPeriods",
                "MaxChargingProfilesInstalled",
                "LocalAuthListMaxLength",
                "SendLocalListMaxLength",
            },
        )

    def set_config(self, key: str, value: str) -> str:
        """Accepted / Rejected / NotSupported, with the side effects of the keys that act."""
        if key not in self.config.values:
            return "NotSupported"
        if key in self.config.readonly:
            return "Rejected"
        if key in ("HeartbeatInterval", "MeterValueSampleInterval", "ConnectionTimeOut"):
            try:
                n = int(value)
            except ValueError:
                return "Rejected"
            if n < 0 or (key == "MeterValueSampleInterval" and n == 0):
                return "Rejected"
            self.config.values[key] = str(n)
            if key == "HeartbeatInterval" and n > 0:
                self.heartbeat_interval = float(n)
                self._schedule_heartbeat()
            if key == "MeterValueSampleInterval":
                self._schedule_meter()
            return "Accepted"
        if value.lower() in ("true", "false") and self.config.values[key] in ("true", "false"):
            self.config.values[key] = value.lower()
            return "Accepted"
        if self.config.values[key] in ("true", "false"):
            return "Rejected"
        self.config.values[key] = value
        return "Accepted"

    @property
    def meter_interval_s(self) -> float:
        return float(self.config.values["MeterValueSampleInterval"])

    def from_server(self, prof: Profile) -> Profile:
        """A profile as sent by the central system, in the simulated clock's terms."""
        f = self.clock.factor
        if not self.server_real_time or f in (0.0, 1.0):
            return prof
        now_real, now_sim = datetime.now(UTC), self.clock.now()

        def sim(t: datetime | None) -> datetime | None:
            return None if t is None else now_sim + (t - now_real) * f

        return replace(
            prof,
            start_schedule=sim(prof.start_schedule),
            valid_from=sim(prof.valid_from),
            valid_to=sim(prof.valid_to),
            duration_s=None if prof.duration_s is None else prof.duration_s * f,
            periods=tuple(replace(p, start_s=p.start_s * f) for p in prof.periods),
        )

    # -- life -------------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    @property
    def online(self) -> bool:
        return self.ws is not None

    @property
    def accepted(self) -> bool:
        return self.state == "Accepted"

    def start(self) -> asyncio.Task[None]:
        self._schedule_meter()
        for c in self.connectors:
            self._schedule_arrival(c)
        return asyncio.create_task(self._run(), name=f"pile {self.spec.id}")

    async def stop(self) -> None:
        self._stopped = True
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        if self.ws is not None:
            await self.ws.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _headers(self) -> dict[str, str]:
        if self.spec.password is None:
            return {}
        token = base64.b64encode(f"{self.spec.id}:{self.spec.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stopped:
            wait = self._offline_until - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.state = "connecting"
            try:
                async with connect(
                    self.url,
                    subprotocols=[self.spec.subprotocol],  # type: ignore[list-item]
                    additional_headers=self._headers(),
                    open_timeout=30,
                    ping_interval=None,
                    close_timeout=2,
                    max_queue=64,
                ) as ws:
                    if ws.subprotocol != self.spec.subprotocol:
                        self.last_error = f"server chose subprotocol {ws.subprotocol!r}"
                        await ws.close()
                        raise ConnectionRefusedError(self.last_error)
                    self.ws = ws
                    self.cp = cp = self.make_cp(ws)
                    self.counters.connects += 1
                    self.state = "booting"
                    self._spawn(self._after_connect())
                    try:
                        await cp.start()  # type: ignore[attr-defined]
                    finally:
                        self.ws = None
                        self.state = "disconnected"
                        cp.fail_pending(ConnectionError("connection lost"))
                        self._cancel_timer("heartbeat")
                    backoff = 1.0
            except (OSError, InvalidHandshake, TimeoutError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
            except ConnectionClosed:
                pass
            self.state = "disconnected"
            if not self._stopped:
                await asyncio.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 30.0)

    async def _after_connect(self) -> None:
        while self.online:
            self._boot_now.clear()
            try:
                status, interval = await self._send_boot()
            except (ConnectionError, ConnectionClosed, TimeoutError):
                return
            self.counters.boots += 1
            self.state = (
                "Accepted" if status == "Accepted" else ("Pending" if status == "Pending" else "Rejected")
            )
            if status == "Accepted":
                self.boot_reason = "PowerUp"
                if interval > 0:
                    self.heartbeat_interval = interval
                    self.config.values["HeartbeatInterval"] = str(int(interval))
                first = self.heartbeat_interval * (self.rng.random() if self.spec.stagger else 1.0)
                self._set_timer("heartbeat", first, self._heartbeat_due)
                for c in self.connectors:
                    c.reported = None
                await self._report_statuses(include_station=True)
                self._kick_flush()
                return
            # Pending / Rejected: no other request until the interval has passed (1.6 4.2, 2.0.1 B02/B03).
            retry = interval if interval > 0 else DEFAULT_BOOT_RETRY_S
            try:
                async with asyncio.timeout(retry):
                    await self._boot_now.wait()  # TriggerMessage(BootNotification) while Pending
            except TimeoutError:
                pass

    async def _report_statuses(self, include_station: bool = False) -> None:
        if include_station:
            await self._guard(self._send_status(None))
        for c in self.connectors:
            await self._report_status(c)

    async def _report_status(self, c: Connector) -> None:
        status = self._status_of(c)
        c.status = status
        if self.accepted and c.reported != status:
            if await self._guard(self._send_status(c)):
                c.reported = status

    def _status_of(self, c: Connector) -> str:
        if not c.operative and c.session is None:
            return "Unavailable"
        if c.session is not None:
            if c.power_w > 0:
                return "Charging"
            return (
                "SuspendedEV"
                if c.session.ev.done or c.session.ev.acceptance_w(self.spec.fast) <= 0
                else ("SuspendedEVSE")
            )
        if c.ev is not None:
            return "Preparing"
        return "Available"

    async def _guard(self, aw: Awaitable[Any]) -> bool:
        """Send a non-transaction message if online; losing it to a dropped connection is fine."""
        if not self.online:
            if asyncio.iscoroutine(aw):
                aw.close()
            return False
        try:
            await aw
            return True
        except (ConnectionError, ConnectionClosed, TimeoutError):
            return False

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOG.warning("pile %s: %r", self.spec.id, task.exception())

    # -- timers -----------------------------------------------------------------------------------

    def _real_delay(self, sim_s: float) -> float:
        f = self.clock.factor
        return sim_s / f if f > 0 else sim_s

    def _set_timer(self, name: str, real_delay: float, fn: Callable[[], None]) -> None:
        self._cancel_timer(name)
        if not self._stopped:
            self._timers[name] = self.loop.call_later(max(0.0, real_delay), fn)

    def _cancel_timer(self, name: str) -> None:
        h = self._timers.pop(name, None)
        if h is not None:
            h.cancel()

    def _schedule_heartbeat(self) -> None:
        self._set_timer("heartbeat", self.heartbeat_interval, self._heartbeat_due)

    def _heartbeat_due(self) -> None:
        self._timers.pop("heartbeat", None)
        if self.accepted:
            self._spawn(self._guard(self._send_heartbeat()))
            self._schedule_heartbeat()

    def _schedule_meter(self) -> None:
        # Start at a random phase so piles do not all report in the same instant.
        first = self.meter_interval_s * (self.rng.random() if "meter" not in self._timers else 1.0)
        self._set_timer("meter", self._real_delay(first), self._meter_due)

    def _meter_due(self) -> None:
        self._set_timer("meter", self._real_delay(self.meter_interval_s), self._meter_due)
        now = self.clock.now()
        self.advance(now)
        for c in self.connectors:
            s = c.session
            if s is not None:
                if s.ev.done:
                    self._stop_session(c, "Local" if self.version == "1.6" else "SOCLimitReached", now)
                elif now >= s.ev.departure:
                    self._stop_session(c, "EVDisconnected", now)
                else:
                    self._enqueue("update", s, now)
                    if self.accepted and self._status_of(c) != c.reported:
                        self._spawn(self._report_status(c))
            elif self.spec.idle_meter_values and self.accepted:
                self._spawn(self._guard(self._send_idle_meter_values(c)))

    def _schedule_arrival(self, c: Connector) -> None:
        if self.spec.arrivals_per_day <= 0:
            return
        now = self.clock.now()
        t = next_arrival(now, self.spec.arrivals_per_day, self.rng, self.spec.flat_arrivals)
        if t is not None:
            self._set_timer(
                f"arrival{c.id}", self._real_delay((t - now).total_seconds()), lambda: self._arrive(c)
            )

    def _arrive(self, c: Connector) -> None:
        self._timers.pop(f"arrival{c.id}", None)
        if c.ev is None and c.operative:
            self.plug_in(c.id)
        else:
            self.counters.lost_arrivals += 1
        self._schedule_arrival(c)

    # -- physics ----------------------------------------------------------------------------------

    def advance(self, now: datetime) -> None:
        """Integrate every connector's charging up to ``now`` (sub-steps of at most 30 s)."""
        remaining = (now - self._t).total_seconds()
        if remaining <= 0:
            self._set_powers(self._t)
            return
        t = self._t
        while remaining > 0:
            h = min(remaining, MAX_SUBSTEP_S)
            self._set_powers(t)
            for c in self.connectors:
                if c.power_w > 0 and c.session is not None:
                    c.session.ev.absorb(c.power_w, h)
                    wh = c.power_w * h / 3600.0
                    c.energy_wh += wh
                    c.session.energy_wh += wh
            remaining -= h
            t += timedelta(seconds=h)
        self._t = now
        self._set_powers(now)

    def _set_powers(self, t: datetime) -> None:
        active = [c for c in self.connectors if c.session is not None]
        for c in self.connectors:
            if c.session is None:
                c.power_w = 0.0
        if not active:
            return
        want = {}
        for c in active:
            assert c.session is not None
            lim = self.profiles.connector_limit_w(c.id, t, c.session.started_at, c.session.tx_id)
            want[c.id] = charging_power_w(c.session.ev, self.spec.fast, self.spec.per_connector_w, lim)
        cap = self.spec.max_power_w
        station = self.profiles.station_limit_w(t)
        if station is not None:
            cap = min(cap, max(0.0, station))
        total = sum(want.values())
        scale = cap / total if total > cap and total > 0 else 1.0
        for c in active:
            c.power_w = want[c.id] * scale

    def limit_w(self, connector_id: int = 1, at: datetime | None = None) -> float:
        """The limit in force for a connector: min(connector max, pile max, active profiles)."""
        t = at or self.clock.now()
        c = self.connector(connector_id)
        s = c.session
        lim = self.profiles.limit_w(c.id, t, s.started_at if s else None, s.tx_id if s else None)
        base = min(self.spec.per_connector_w, self.spec.max_power_w)
        return base if lim is None else max(0.0, min(base, lim))

    def power_w(self, connector_id: int | None = None) -> float:
        """Charging power now (physics advanced to the clock), one connector or the whole pile."""
        self.advance(self.clock.now())
        if connector_id is None:
            return sum(c.power_w for c in self.connectors)
        return self.connector(connector_id).power_w

    def connector(self, connector_id: int) -> Connector:
        if not 1 <= connector_id <= len(self.connectors):
            raise KeyError(f"pile {self.spec.id} has no connector {connector_id}")
        return self.connectors[connector_id - 1]

    # -- sessions ---------------------------------------------------------------------------------

    def plug_in(
        self,
        connector_id: int | None = None,
        ev: Ev | None = None,
        id_token: str | None = None,
        *,
        remote: bool = False,
        remote_start_id: int | None = None,
    ) -> int:
        """An EV plugs in now (first free connector by default); returns the connector id."""
        if connector_id is None:
            free = [c for c in self.connectors if c.ev is None and c.operative]
            if not free:
                raise RuntimeError(f"pile {self.spec.id}: no free connector")
            c = free[0]
        else:
            c = self.connector(connector_id)
            if c.ev is not None:
                raise RuntimeError(f"pile {self.spec.id}: connector {c.id} is occupied")
        now = self.clock.now()
        token = id_token or (self.rng.choice(self.spec.id_tokens) if self.spec.id_tokens else None)
        c.ev = ev or random_ev(now, self.rng, self.spec.fast, token)
        if id_token:
            c.ev.id_token = id_token
        self._spawn(self._session_flow(c, c.ev, remote, remote_start_id))
        return c.id

    async def _session_flow(self, c: Connector, ev: Ev, remote: bool, remote_start_id: int | None) -> None:
        await self._report_status(c)
        token = ev.id_token
        if remote and self.config.values["AuthorizeRemoteTxRequests"] != "true":
            ok = True
        elif self.accepted:
            try:
                ok = await self._send_authorize(token)
            except (ConnectionError, ConnectionClosed, TimeoutError):
                ok = self._offline_authorized(token)
        else:
            ok = self._offline_authorized(token)
        if c.ev is not ev:
            return  # unplugged meanwhile
        if not ok:
            self.counters.auth_rejected += 1
            c.ev = None
            await self._report_status(c)
            return
        self.start_session(c, ev, token, remote_start_id)

    def _offline_authorized(self, token: str) -> bool:
        if self.local_list.get(token) == "Accepted":
            return True
        if token in self.local_list:
            return False
        return self.config.values["AllowOfflineTxForUnknownId"] == "true"

    def start_session(self, c: Connector, ev: Ev, token: str, remote_start_id: int | None = None) -> Session:
        now = self.clock.now()
        self.advance(now)
        s = Session(c.id, ev, token, now, int(c.energy_wh), remote_start_id=remote_start_id)
        s.tx_id = self._new_tx_id()
        c.session = s
        self.counters.sessions += 1
        self._enqueue("start", s, now)
        self._set_powers(now)
        self._spawn(self._report_status(c))
        return s

    def _new_tx_id(self) -> str | None:
        return None  # 1.6: the server assigns it

    def _stop_session(self, c: Connector, reason: str, now: datetime | None = None) -> None:
        s = c.session
        if s is None:
            return
        now = now or self.clock.now()
        self.advance(now)
        s.stop_reason = reason
        self._enqueue("stop", s, now, reason=reason)
        s.ended = True
        c.session = None
        c.ev = None
        c.power_w = 0.0
        self.profiles.end_transaction(c.id)
        if c.pending_inoperative:
            c.operative, c.pending_inoperative = False, False
        self._spawn(self._report_status(c))

    def stop_transaction(self, tx_id: str, reason: str = "Remote") -> bool:
        for c in self.connectors:
            if c.session is not None and c.session.tx_id == tx_id:
                self._stop_session(c, reason)
                return True
        return False

    def unplug(self, connector_id: int = 1, reason: str = "EVDisconnected") -> None:
        c = self.connector(connector_id)
        if c.session is not None:
            self._stop_session(c, reason)
        else:
            c.ev = None
            self._spawn(self._report_status(c))

    def session(self, connector_id: int = 1) -> Session | None:
        return self.connector(connector_id).session

    # -- the transaction queue --------------------------------------------------------------------

    def _enqueue(self, kind: TxKind, s: Session, now: datetime, reason: str | None = None) -> None:
        c = self.connector(s.connector_id)
        offline = not self.accepted
        msg = TxMessage(
            kind,
            s,
            now,
            int(c.energy_wh),
            c.power_w,
            s.ev.soc_pct,
            offline,
            seq_no=s.seq_no,
            trigger={"start": "Authorized", "update": "MeterValuePeriodic", "stop": "StopAuthorized"}[kind],
            reason=reason,
        )
        s.seq_no += 1
        self.txq.append(msg)
        self._kick_flush()

    def _kick_flush(self) -> None:
        if not self._flushing and self.accepted and self.txq:
            self._flushing = True
            self._spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self.txq and self.accepted:
                msg = self.txq[0]
                try:
                    await self._send_tx(msg)
                except (ConnectionError, ConnectionClosed, TimeoutError):
                    return  # stays queued: replayed after the reconnect
                self.txq.popleft()
                if msg.offline:
                    self.counters.replayed += 1
                if self.sent_tx is not None:
                    self.sent_tx.append(msg)
        finally:
            self._flushing = False
        if self.txq and self.accepted:
            self._kick_flush()

    # -- hooks for tests and operators ------------------------------------------------------------

    def go_offline(self, seconds: float) -> None:
        """Drop the connection now (no close handshake, like a lost network) and stay away for
        ``seconds`` of real time; transaction messages meanwhile are queued."""
        self._offline_until = self.loop.time() + seconds
        ws = self.ws
        if ws is not None:
            ws.transport.abort()

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110 (an arbitrary predicate)
                await asyncio.sleep(0.01)

    async def saturating_call(self, n: int) -> None:
        """One request for a saturation run: Heartbeat and MeterValues in turn."""
        if n % 2:
            await self._send_heartbeat()
        else:
            await self._send_idle_meter_values(self.connectors[0])

    def trigger_boot(self) -> None:
        self._boot_now.set()

    async def reboot(self, reason: str) -> None:
        """Stop sessions (queued stop messages are sent first if online), drop the link, boot again."""
        for c in self.connectors:
            if c.session is not None:
                self._stop_session(c, reason)
        try:
            async with asyncio.timeout(5):
                while self.txq and self.accepted:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        self.boot_reason = "RemoteReset"
        self.go_offline(0.3)

    def set_available(self, connector_id: int, operative: bool) -> str:
        """ChangeAvailability: Accepted, Scheduled (a session is running), or Rejected."""
        targets = self.connectors if connector_id == 0 else [self.connector(connector_id)]
        scheduled = False
        for c in targets:
            if not operative and c.session is not None:
                c.pending_inoperative = True
                scheduled = True
            else:
                c.operative = operative
                c.pending_inoperative = False
            self._spawn(self._report_status(c))
        return "Scheduled" if scheduled else "Accepted"

    async def firmware_flow(
        self, statuses: list[str], request_id: int | None, start_at: datetime | None
    ) -> None:
        if start_at is not None:
            wait = (start_at - self.clock.now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(self._real_delay(wait))
        for st in statuses:
            await asyncio.sleep(STEP_DELAY_S)
            await self._guard(self._send_firmware_status(st, request_id))

    async def log_flow(self, request_id: int | None) -> None:
        for st in ("Uploading", "Uploaded"):
            await asyncio.sleep(STEP_DELAY_S)
            await self._guard(self._send_log_status(st, request_id))

    def apply_local_list(self, version: int, full: bool, entries: list[tuple[str, str | None]]) -> None:
        if full:
            self.local_list = {}
        for token, status in entries:
            if status is None:
                self.local_list.pop(token, None)
            else:
                self.local_list[token] = status
        self.local_list_version = version
