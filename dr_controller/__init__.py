"""Demand response: resources, baselines, allocation, events and settlement.

The modules here are pure (no I/O) except ``baselines.load_history``, so the coming dispatch loop,
the API and the benchmarks share one tested core. See ``resources`` for the sign conventions.
"""
