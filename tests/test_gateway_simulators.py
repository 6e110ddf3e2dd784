"""The gateway against the project's simulators (simulators.fleet): every shipped profile polls its
simulated device, and the controls are accepted by the simulated devices."""

from __future__ import annotations

import pytest
from test_gateway_integration import device, make_settings, running, status, telemetry

from core.payloads import Command

fleet_module = pytest.importorskip("simulators.fleet")
pytestmark = pytest.mark.timeout(30)

KINDS = {
    "pv_inverter": "sunspec-pv-inverter",
    "battery": "sunspec-battery",
    "meter": "sunspec-meter",
    "hydro": "lixian-hydro-v1",
    "load": "lixian-flexload-v1",
}


async def test_every_profile_against_its_simulator() -> None:
    settings = make_settings()
    root = settings.topic_root
    specs = [(kind, 1) for kind in KINDS]
    async with fleet_module.serve_devices(specs, base_port=0) as fleet:
        configs, keys = [], {}
        for key, endpoint in fleet.endpoints.items():
            kind = fleet.devices[key].kind
            keys[kind] = key
            configs.append(device(key, KINDS[kind], endpoint.port, interval=0.25))
        async with running(settings, configs) as (_gateway, obs):
            for kind, key in keys.items():
                batch = await obs.wait_for(telemetry(root, key))
                values = batch["samples"][0]["values"]
                assert values, kind
                await obs.wait_for(status(root, key, "online"))
            pv = keys["pv_inverter"]
            pv_values = (await obs.wait_for(telemetry(root, pv)))["samples"][0]["values"]
            assert pv_values["rated_power_w"] == pytest.approx(fleet.device(pv).value("rated_power_w"))

            commands = {
                "pv_inverter": ("set_active_power_limit", {"pct": 40}),
                "battery": ("set_battery_power", {"watts": -50_000}),
                "hydro": ("set_output_setpoint", {"watts": 400_000}),
                "load": ("set_curtailment", {"watts": 1_000}),
            }
            for kind, (op, args) in commands.items():
                key = keys[kind]
                await obs.command("site-a", key, Command(id=f"{kind}-1", op=op, args=args))
                result = await obs.result("site-a", key, f"{kind}-1")
                assert result["status"] == "accepted", (kind, result)
                assert next(iter(result["readback"].values())) == pytest.approx(
                    next(iter(args.values())), rel=1e-3
                )
            # over the PV's limits: rejected
            await obs.command(
                "site-a", pv, Command(id="pv-2", op="set_active_power_limit", args={"pct": 101})
            )
            assert (await obs.result("site-a", pv, "pv-2"))["status"] == "rejected"

            fleet.device(pv).pause()
            await obs.wait_for(status(root, pv, "offline"))
            fleet.device(pv).resume()
            await obs.wait_for(
                lambda t, p: (
                    status(root, pv, "online")(t, p)
                    and t is not None
                    and p["ts"] > max(q["ts"] for tt, q in obs.messages if status(root, pv, "offline")(tt, q))
                )
            )
