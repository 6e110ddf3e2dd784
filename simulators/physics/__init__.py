"""Device physics: pure models stepped by simulated time deltas, deterministic given a seed.

Nothing here knows about registers or Modbus; ``simulators.devices`` maps these states to register images.
"""
