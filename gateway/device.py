"""One device's task: connect, discover, poll on an absolute schedule, carry out its commands.

Everything that talks to the device happens here, one request at a time on the device's one
connection, so polls and command writes never interleave.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from core import topics
from core.payloads import (
    Command,
    CommandResult,
    CommandStatus,
    DeviceEvent,
    DeviceState,
    Sample,
    Status,
    TelemetryBatch,
    encode,
    encode_telemetry,
    utcnow,
)
from core.settings import Settings
from gateway import metrics
from gateway.commands import check_command, from_target, resolve, to_target
from gateway.config import DeviceConfig
from gateway.drivers import Driver, make_driver, read_image
from gateway.errors import CommandRejected, DeviceFault, DeviceOffline
from gateway.modbus import ModbusConnection
from gateway.profile import Control, Profile

log = logging.getLogger(__name__)

COMMAND_QUEUE = 32


@dataclass(slots=True)
class PollStats:
    polls: int = 0
    late: int = 0  # started more than the tolerance after their deadline, or skipped
    errors: int = 0


Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


class DeviceTask:
    def __init__(
        self,
        config: DeviceConfig,
        profile: Profile,
        settings: Settings,
        gateway_name: str,
        publish: Publish,
        phase_s: float = 0.0,
    ) -> None:
        self.config = config
        self.profile = profile
        self.settings = settings
        self.source = gateway_name
        self._publish = publish
        self.interval = config.poll_interval_s or profile.poll_interval_s
        self.phase_s = phase_s % self.interval
        self.late_tolerance_s = min(0.1 * self.interval, 0.25)
        self.driver: Driver = make_driver(profile)
        self.conn = ModbusConnection(
            config.host, config.port, config.unit_id, settings.gateway.request_timeout_s
        )
        self.commands: asyncio.Queue[Command] = asyncio.Queue(COMMAND_QUEUE)
        self.stats = PollStats()
        self.state: DeviceState | None = None
        self.reason: str | None = None
        self.reported: dict[str, float] = {}
        self.holds: dict[str, float] = {}  # op -> loop time when its default comes back
        self._ready = False  # connected and discovered
        self.seq = 0  # the next telemetry batch's seq (the gateway sets where the last run stopped)
        root = settings.topic_root
        self.telemetry_topic = topics.topic(config.site, config.key, topics.Channel.TELEMETRY, root)
        self.status_topic = topics.topic(config.site, config.key, topics.Channel.STATUS, root)
        self.result_topic = topics.topic(config.site, config.key, topics.Channel.CMD_RESULT, root)
        self.event_topic = topics.topic(config.site, config.key, topics.Channel.EVENT, root)

    # -- called from outside the task -------------------------------------------------------------

    def submit(self, command: Command) -> None:
        try:
            self.commands.put_nowait(command)
        except asyncio.QueueFull:
            self._answer(command, CommandStatus.REJECTED, "device busy: too many commands queued")

    def offline_status(self, reason: str) -> bytes:
        return encode(Status(state=DeviceState.OFFLINE, reason=reason, source=self.source))

    # -- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        deadline = loop.time() + self.phase_s
        try:
            while True:
                try:
                    await self._serve_until(deadline)
                    if not self._ready:
                        await self._connect()
                        deadline = loop.time()  # poll straight away; no lateness to count
                    started = loop.time()
                    if started - deadline > self.late_tolerance_s:
                        self._late()
                    await self._poll(started)
                    await self._restore_expired_holds()
                    backoff = 0.0
                    deadline = self._next_deadline(deadline, loop.time())
                except (DeviceOffline, DeviceFault) as err:
                    backoff = self._failed(err, backoff)
                    deadline = loop.time() + backoff * random.uniform(0.5, 1.0)
        finally:
            self.conn.close()

    def _next_deadline(self, deadline: float, now: float) -> float:
        deadline += self.interval
        if now > deadline:  # ran over one or more whole periods: skip them, never burst to catch up
            skipped = int((now - deadline) // self.interval) + 1
            deadline += skipped * self.interval
            for _ in range(skipped):
                self._late()
        return deadline

    def _late(self) -> None:
        self.stats.late += 1
        metrics.LATE_POLLS.inc()

    async def _connect(self) -> None:
        await self.conn.connect()
        await self.driver.discover(self.conn)
        self._ready = True
        if self.driver.identity:
            log.info("device identified", extra={"device": self.config.key, **self.driver.identity})

    async def _poll(self, started: float) -> None:
        image = await read_image(self.conn, self.driver.blocks)
        reading = self.driver.decode(image)
        now = asyncio.get_running_loop().time()
        metrics.POLL_LATENCY.observe(now - started)
        metrics.POLLS.inc()
        self.stats.polls += 1
        self.reported = reading.reported
        self._set_state(DeviceState.ONLINE, None)
        if reading.metrics:
            batch = TelemetryBatch(seq=self.seq, samples=[Sample(ts=utcnow(), values=reading.metrics)])
            self.seq += 1
            # (Profiles publish catalogue metrics only, so the binary encoding always applies.)
            payload = encode_telemetry(batch, self.settings.gateway.telemetry_encoding)
            self._publish(self.telemetry_topic, payload, False)

    def _failed(self, err: DeviceOffline | DeviceFault, backoff: float) -> float:
        kind = DeviceState.OFFLINE if isinstance(err, DeviceOffline) else DeviceState.FAULT
        self.stats.errors += 1
        metrics.POLL_ERRORS.labels(kind.value).inc()
        self._ready = False
        self.conn.close()
        self._set_state(kind, str(err))
        first = min(self.interval, 1.0)
        return min(max(backoff * 2, first), self.settings.gateway.max_backoff_s)

    def _set_state(self, state: DeviceState, reason: str | None) -> None:
        if state == self.state:  # reported once per change; retries with other wording stay quiet
            return
        if state is DeviceState.ONLINE:
            log.info("device online", extra={"device": self.config.key, "was": self.state})
        else:
            log.warning("device %s", state.value, extra={"device": self.config.key, "reason": reason})
        if self.state is not None:
            metrics.DEVICES.labels(self.state.value).dec()
        metrics.DEVICES.labels(state.value).inc()
        self.state, self.reason = state, reason
        status = Status(state=state, reason=reason, source=self.source)
        self._publish(self.status_topic, encode(status), True)

    # -- commands ---------------------------------------------------------------------------------

    async def _serve_until(self, deadline: float) -> None:
        """Answer commands (and restore expired holds) until the deadline."""
        loop = asyncio.get_running_loop()
        while True:
            wake = min([deadline, *self.holds.values()]) if self._ready else deadline
            timeout = wake - loop.time()
            if timeout <= 0:
                if wake >= deadline:
                    return
                await self._restore_expired_holds()
                continue
            try:
                async with asyncio.timeout(timeout):
                    command = await self.commands.get()
            except TimeoutError:
                continue
            await self._carry_out(command)

    async def _carry_out(self, command: Command) -> None:
        if command.expires_at is not None and command.expires_at <= utcnow():
            self._answer(command, CommandStatus.EXPIRED, f"expired at {command.expires_at.isoformat()}")
            return
        # Checked first: limits and scale factors come from a live, discovered device.
        if not self._ready:
            self._answer(
                command, CommandStatus.FAILED, f"device {self.state or 'not connected'}: {self.reason}"
            )
            return
        try:
            checked = check_command(command, self.profile, self.reported)
            writes = self.driver.encode_control(checked.control, checked.target_value)
        except CommandRejected as err:
            self._answer(command, CommandStatus.REJECTED, str(err))
            return
        try:
            for write in writes:
                await self.conn.write(write.address, write.words)
            readback = await self._read_back(checked.control)
        except (DeviceOffline, DeviceFault) as err:
            self._answer(command, CommandStatus.FAILED, str(err))
            return
        key = checked.control.readback_metric or checked.control.argument
        tolerance = self._tolerance(checked.control)
        if readback is None or abs(readback - checked.argument) > tolerance:
            self._answer(
                command,
                CommandStatus.FAILED,
                f"readback {readback} != {checked.argument}",
                {key: readback} if readback is not None else None,
            )
            return
        if command.hold_s is not None:
            self.holds[command.op] = asyncio.get_running_loop().time() + command.hold_s
        else:
            self.holds.pop(command.op, None)  # a setpoint without hold replaces a held one for good
        self._answer(command, CommandStatus.ACCEPTED, None, {key: readback})

    def _tolerance(self, control: Control) -> float:
        step = self.driver.resolution(control)
        if control.percent_of is not None:
            step = from_target(control, step, self.reported)
        return step / 2 + 1e-9 + abs(step) * 1e-6

    async def _read_back(self, control: Control) -> float | None:
        block = self.driver.readback_block(control)
        image = await read_image(self.conn, [block])
        value = self.driver.decode_readback(control, image)
        return None if value is None else from_target(control, value, self.reported)

    async def _restore_expired_holds(self) -> None:
        now = asyncio.get_running_loop().time()
        for op, until in list(self.holds.items()):
            if until > now:
                continue
            control = self.profile.controls[op]
            try:
                default = resolve(control.default, self.reported)
                writes = self.driver.encode_control(
                    control, to_target(control, default, self.reported), default=True
                )
                for write in writes:
                    await self.conn.write(write.address, write.words)
            except CommandRejected as err:
                log.error(
                    "hold expired, default not writable",
                    extra={"device": self.config.key, "op": op, "reason": str(err)},
                )
                del self.holds[op]
                continue
            # DeviceOffline/DeviceFault propagate: the hold stays and is restored once the device is back
            del self.holds[op]
            log.info(
                "hold expired, default restored",
                extra={"device": self.config.key, "op": op, "value": default},
            )
            event = DeviceEvent(kind="control.restored", data={"op": op, control.argument: default})
            self._publish(self.event_topic, encode(event), False)

    def _answer(
        self,
        command: Command,
        status: CommandStatus,
        detail: str | None,
        readback: dict[str, float] | None = None,
    ) -> None:
        metrics.COMMANDS.labels(status.value).inc()
        if status is not CommandStatus.ACCEPTED:
            log.info(
                "command %s",
                status.value,
                extra={"device": self.config.key, "op": command.op, "id": command.id, "detail": detail},
            )
        result = CommandResult(id=command.id, status=status, detail=detail, readback=readback)
        self._publish(self.result_topic, encode(result), False)
