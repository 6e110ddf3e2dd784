"""The gateway process: one MQTT link, one task per device, clean shutdown on cancellation."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from core import topics
from core.payloads import Command
from core.settings import Settings
from gateway import profile as profiles
from gateway.config import GatewayConfig
from gateway.device import DeviceTask
from gateway.mqtt_link import MqttLink
from gateway.outbox import Outbox
from gateway.spool import Spool

log = logging.getLogger(__name__)


class Gateway:
    """The parts of a running gateway (exposed for tests and the benchmark)."""

    def __init__(self, settings: Settings, config: GatewayConfig, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.config = config
        if outbox is None:
            g = settings.gateway
            outbox = Spool(
                Path(g.state_dir) / config.name,
                max_bytes=g.spool_max_bytes,
                segment_bytes=g.spool_segment_bytes,
                fsync_interval_s=g.spool_fsync_interval_s,
            )
        self.outbox: Outbox = outbox
        count = max(len(config.devices), 1)
        self.devices: dict[tuple[str, str], DeviceTask] = {}
        for index, device in enumerate(config.devices):
            profile = profiles.load(device.profile)
            interval = device.poll_interval_s or profile.poll_interval_s
            # Spread the devices' polls evenly over the interval instead of all at once.
            task = DeviceTask(device, profile, settings, config.name, self._publish, index / count * interval)
            task.seq = self.outbox.next_seq(task.telemetry_topic)  # continue where the last run stopped
            self.devices[(device.site, device.key)] = task
        self.outbox.watch_seqs(lambda: {t.telemetry_topic: t.seq for t in self.devices.values()})
        self.link = MqttLink(settings, config.name, self.outbox, list(self.devices), self._command)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.link.publish(topic, payload, retain=retain)

    def _command(self, site: str, device: str, command: Command) -> None:
        task = self.devices.get((site, device))
        if task is not None:
            task.submit(command)

    async def run(self) -> None:
        log.info("gateway starting", extra={"gateway": self.config.name, "devices": len(self.devices)})
        try:
            await self._run()
        finally:
            self.outbox.close()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            link = tg.create_task(self.link.run(), name="mqtt-link")
            try:
                async with asyncio.TaskGroup() as device_tasks:
                    for (site, key), task in self.devices.items():
                        device_tasks.create_task(task.run(), name=f"device:{site}/{key}")
            finally:
                # Devices are stopped: tell the world before the link goes (a clean disconnect sends
                # no last will, so the offline statuses are published explicitly).
                goodbye = {t.status_topic: t.offline_status("gateway stopped") for t in self.devices.values()}
                await self.link.say_goodbye(goodbye)
                link.cancel()


async def run_gateway(settings: Settings, config: GatewayConfig) -> None:
    """Run the gateway until cancelled, then shut down cleanly."""
    for device in config.devices:
        topics.check_key(device.site)
    await Gateway(settings, config).run()
