"""OCPP charge-point simulators (1.6J and 2.0.1) on the ``ocpp`` library, with EV physics.

```python
from simulators.ocpp import run_piles, generate_piles, PileSpec
async with run_piles(generate_piles(100), "ws://127.0.0.1:9000/ocpp", clock=SimClock(60)) as fleet:
    await fleet.wait_accepted()
    pile = fleet.pile("sim-cp-00001")
    pile.plug_in()            # an EV arrives now: Authorize, start, meter values, ...
    pile.power_w(), pile.limit_w(1), pile.sent["MeterValues"]
    pile.go_offline(5)        # drop the link for 5 s; transaction messages are queued and replayed
```
"""

from simulators.ocpp.fleet import PileFleet, make_pile, raise_fd_limit, run_piles
from simulators.ocpp.physics import Ev, random_ev
from simulators.ocpp.pile import FleetStats, Pile, Session
from simulators.ocpp.profiles import Electrical, Period, Profile, ProfileStack, Purpose
from simulators.ocpp.spec import PileSpec, generate_piles, load_piles, piles_yaml

__all__ = [
    "Electrical",
    "Ev",
    "FleetStats",
    "Period",
    "Pile",
    "PileFleet",
    "PileSpec",
    "Profile",
    "ProfileStack",
    "Purpose",
    "Session",
    "generate_piles",
    "load_piles",
    "make_pile",
    "piles_yaml",
    "raise_fd_limit",
    "random_ev",
    "run_piles",
]
