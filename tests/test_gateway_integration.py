"""The gateway over real Modbus TCP (small pymodbus servers) and the real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiomqtt
import pytest
from test_gateway_fakes import FakeDevice, model_base, sunspec_registers

from core import topics
from core.payloads import Command, utcnow
from core.settings import GatewaySettings, Settings
from gateway.config import DeviceConfig, GatewayConfig
from gateway.mqtt_link import gateway_status_topic
from gateway.service import Gateway

pytestmark = pytest.mark.timeout(30)


def make_settings() -> Settings:
    return Settings(
        topic_root=f"lishui-test-gw-{uuid.uuid4().hex[:8]}",
        gateway=GatewaySettings(request_timeout_s=0.3, max_backoff_s=1.0),
        _env_file=None,  # type: ignore[call-arg]
    )


def pv_registers(watts: int = 4321) -> dict[int, int]:
    return sunspec_registers(
        {
            1: {"Mn": "Lishui Test", "Md": "PV-10", "SN": "PV0001", "DA": 1},
            103: {
                "W": watts,
                "W_SF": 0,
                "WH": 1234567,
                "WH_SF": 0,
                "PhVphA": 2301,
                "V_SF": -1,
                "Hz": 5002,
                "Hz_SF": -2,
                "PF": 95,
                "PF_SF": 0,
                "A": 18,
                "A_SF": 0,
                "St": 4,
            },
            120: {"DERTyp": 4, "WRtg": 10000, "WRtg_SF": 0},
            123: {"WMaxLimPct": 100, "WMaxLimPct_SF": 0, "WMaxLim_Ena": 0},
        }
    )


def hydro_registers() -> dict[int, int]:
    regs = {
        0: 1250,
        1: 340,
        2: 410,
        3: 655,
        4: 0x0001,
        5: 0x86A0,
        6: 4998,
        7: 2305,
        8: 0,
        9: 4321,
        10: 1,
        11: 0x0003,
        12: 0x0D40,
        100: 0x0003,
        101: 0x0D40,
        102: 500,
    }
    return regs  # active power 100000 W, energy 4321 kWh, rated 200000 W, setpoint 200000 W


class Observer:
    """Everything published under the test's topic root."""

    def __init__(self, client: aiomqtt.Client, root: str) -> None:
        self.client, self.root = client, root
        self.messages: list[tuple[str, Any]] = []
        self._new = asyncio.Condition()

    async def collect(self) -> None:
        async for message in self.client.messages:
            if str(message.topic).endswith("/cmd") or not message.payload:
                continue  # our own commands, cleared retained statuses
            async with self._new:
                self.messages.append((str(message.topic), json.loads(message.payload)))  # type: ignore[arg-type]
                self._new.notify_all()

    async def wait_for(self, predicate: Callable[[str, Any], bool], within_s: float = 5.0) -> Any:
        async with asyncio.timeout(within_s), self._new:
            while True:
                for topic, payload in self.messages:
                    if predicate(topic, payload):
                        return payload
                await self._new.wait()

    async def command(self, site: str, device: str, command: Command | bytes) -> None:
        payload = command if isinstance(command, bytes) else command.model_dump_json().encode()
        await self.client.publish(topics.topic(site, device, topics.Channel.CMD, self.root), payload, qos=1)

    async def result(self, site: str, device: str, command_id: str) -> Any:
        topic = topics.topic(site, device, topics.Channel.CMD_RESULT, self.root)
        return await self.wait_for(lambda t, p: t == topic and p.get("id") == command_id)


@asynccontextmanager
async def running(settings: Settings, devices: list[DeviceConfig]) -> AsyncIterator[tuple[Gateway, Observer]]:
    # A name (and so an MQTT client id) of its own: a clash would make the broker drop the other client.
    config = GatewayConfig(name=f"gw-{settings.topic_root[-8:]}", devices=devices)
    gateway = Gateway(settings, config)
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        await client.subscribe(f"{settings.topic_root}/#", qos=1)
        observer = Observer(client, settings.topic_root)
        collector = asyncio.create_task(observer.collect())
        task = asyncio.create_task(gateway.run())
        try:
            await asyncio.wait_for(gateway.link.connected.wait(), 5)
            yield gateway, observer
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            collector.cancel()
            with pytest.raises(asyncio.CancelledError):
                await collector
        # retained statuses stay on the broker otherwise
        for topic, _ in {(t, None) for t, _ in observer.messages if t.endswith("/status")}:
            await client.publish(topic, b"", qos=1, retain=True)


def device(key: str, profile: str, port: int, interval: float = 0.2) -> DeviceConfig:
    return DeviceConfig(
        key=key, site="site-a", profile=profile, host="127.0.0.1", port=port, poll_interval_s=interval
    )


def telemetry(root: str, key: str) -> Callable[[str, Any], bool]:
    topic = topics.topic("site-a", key, topics.Channel.TELEMETRY, root)
    return lambda t, _p: t == topic


def status(root: str, key: str, state: str) -> Callable[[str, Any], bool]:
    topic = topics.topic("site-a", key, topics.Channel.STATUS, root)
    return lambda t, p: t == topic and p.get("state") == state


async def test_telemetry_arrives_scaled_and_commands_are_carried_out() -> None:
    settings = make_settings()
    root = settings.topic_root
    pv_regs = pv_registers()
    wmax = model_base(pv_regs, 123)
    async with (
        FakeDevice(pv_regs, writable=range(wmax, wmax + 28)) as pv,
        FakeDevice(hydro_registers(), writable=range(100, 103)) as hydro,
        running(
            settings,
            [device("pv1", "sunspec-pv-inverter", pv.port), device("hydro1", "lixian-hydro-v1", hydro.port)],
        ) as (_gateway, obs),
    ):
        batch = await obs.wait_for(telemetry(root, "pv1"))
        values = batch["samples"][0]["values"]
        assert values["active_power_w"] == 4321
        assert values["voltage_l1_v"] == pytest.approx(230.1)
        assert values["frequency_hz"] == pytest.approx(50.02)
        assert values["power_factor"] == pytest.approx(0.95)
        assert values["energy_export_wh"] == 1234567
        assert values["rated_power_w"] == 10000
        assert "voltage_l2_v" not in values  # not implemented by the device: no value
        hydro_values = (await obs.wait_for(telemetry(root, "hydro1")))["samples"][0]["values"]
        assert hydro_values == pytest.approx(
            {
                "reservoir_level_m": 12.5,
                "inflow_m3s": 3.4,
                "discharge_flow_m3s": 4.1,
                "gate_opening_pct": 65.5,
                "active_power_w": 100000,
                "frequency_hz": 49.98,
                "voltage_v": 230.5,
                "energy_export_wh": 4321000,
                "operating_state": 1,
                "rated_power_w": 200000,
                "active_power_setpoint_w": 200000,
            }
        )
        # The model chain is read as one request per poll (103+120+123 = 106 registers).
        assert (model_base(pv_regs, 103), 106) in pv.reads
        await obs.wait_for(status(root, "pv1", "online"))

        # accepted, with readback
        await obs.command("site-a", "pv1", Command(id="c1", op="set_active_power_limit", args={"pct": 50}))
        result = await obs.result("site-a", "pv1", "c1")
        assert result["status"] == "accepted", result
        assert result["readback"] == {"active_power_limit_pct": 50.0}
        assert pv.registers[wmax + 5] == 50 and pv.registers[wmax + 9] == 1  # WMaxLimPct, WMaxLim_Ena

        # out of range: rejected, nothing written
        writes_before = len(pv.writes)
        await obs.command("site-a", "pv1", Command(id="c2", op="set_active_power_limit", args={"pct": 150}))
        result = await obs.result("site-a", "pv1", "c2")
        assert result["status"] == "rejected" and "outside 0..100" in result["detail"]
        await obs.command(
            "site-a", "hydro1", Command(id="h1", op="set_output_setpoint", args={"watts": 250000})
        )
        assert (await obs.result("site-a", "hydro1", "h1"))["status"] == "rejected"  # above rated_power_w
        await obs.command("site-a", "pv1", Command(id="c3", op="open_the_pod_bay_doors"))
        assert (await obs.result("site-a", "pv1", "c3"))["status"] == "rejected"
        await obs.command("site-a", "pv1", b'{"v": 1, "id": "c4", "op": "set_active_power_limit", "args": 7}')
        assert (await obs.result("site-a", "pv1", "c4"))["status"] == "rejected"
        await obs.command("site-a", "pv1", b"not json at all")  # logged, nothing to answer, no crash
        past = utcnow() - timedelta(seconds=1)
        await obs.command(
            "site-a", "pv1", Command(id="c5", op="set_active_power_limit", args={"pct": 10}, expires_at=past)
        )
        assert (await obs.result("site-a", "pv1", "c5"))["status"] == "expired"
        assert len(pv.writes) == writes_before

        # a 32-bit setpoint on the vendor map, held briefly, then the default (rated power) comes back
        await obs.command(
            "site-a", "hydro1", Command(id="h2", op="set_output_setpoint", args={"watts": 150000}, hold_s=0.5)
        )
        result = await obs.result("site-a", "hydro1", "h2")
        assert result["status"] == "accepted" and result["readback"] == {"active_power_setpoint_w": 150000}
        assert (100, [0x0002, 0x49F0]) in hydro.writes
        event_topic = topics.topic("site-a", "hydro1", topics.Channel.EVENT, root)
        event = await obs.wait_for(lambda t, _p: t == event_topic)
        assert event["kind"] == "control.restored"
        assert hydro.writes[-1] == (100, [0x0003, 0x0D40])

    # clean shutdown: every device and the gateway itself say offline (retained)
    gw_status = [p for t, p in obs.messages if t == gateway_status_topic(root, f"gw-{root[-8:]}")]
    assert [s["state"] for s in gw_status] == ["online", "offline"]
    assert any(status(root, "pv1", "offline")(t, p) for t, p in obs.messages)


async def test_dead_device_goes_offline_while_another_keeps_publishing() -> None:
    settings = make_settings()
    root = settings.topic_root
    async with (
        FakeDevice(pv_registers()) as alive,
        FakeDevice(pv_registers(), writable=()) as dying,
        running(
            settings,
            [
                device("alive", "sunspec-pv-inverter", alive.port),
                device("dying", "sunspec-pv-inverter", dying.port),
            ],
        ) as (gateway, obs),
    ):
        await obs.wait_for(status(root, "dying", "online"))
        dying.pause()
        offline = await obs.wait_for(status(root, "dying", "offline"))
        assert "no answer" in offline["reason"]
        seen = len([1 for t, p in obs.messages if telemetry(root, "alive")(t, p)])
        await asyncio.sleep(0.6)
        now_seen = len([1 for t, p in obs.messages if telemetry(root, "alive")(t, p)])
        assert now_seen >= seen + 2  # 0.2 s interval: the dead device does not hold the other back
        # a command for the offline device fails at once
        await obs.command("site-a", "dying", Command(id="d1", op="set_active_power_limit", args={"pct": 50}))
        assert (await obs.result("site-a", "dying", "d1"))["status"] == "failed"
        offline_count = len([1 for t, p in obs.messages if status(root, "dying", "offline")(t, p)])
        assert offline_count == 1  # published once on change, not on every retry
        dying.resume()
        await obs.wait_for(lambda t, p: status(root, "dying", "online")(t, p) and p["ts"] > offline["ts"])
        assert gateway.devices[("site-a", "alive")].stats.errors == 0


async def test_modbus_exception_and_missing_models_are_faults() -> None:
    settings = make_settings()
    root = settings.topic_root
    broken_hydro = hydro_registers()
    del broken_hydro[7]  # the 0..12 read now answers exception 02
    no_controls = sunspec_registers({1: {"Mn": "X"}, 103: {"W": 1, "W_SF": 0}, 120: {}})
    async with (
        FakeDevice(broken_hydro) as hydro,
        FakeDevice(no_controls) as pv,
        running(
            settings,
            [device("hydro", "lixian-hydro-v1", hydro.port), device("pv", "sunspec-pv-inverter", pv.port)],
        ) as (_gateway, obs),
    ):
        fault = await obs.wait_for(status(root, "hydro", "fault"))
        assert "Modbus exception 2" in fault["reason"]
        fault = await obs.wait_for(status(root, "pv", "fault"))
        assert "models [123] missing" in fault["reason"]
