"""Daily shapes (fraction of peak by local hour) for loads and meters, and local-time helpers.

Lixian keeps China Standard Time all year (UTC+8, no daylight saving), so a fixed offset is exact.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8), "CST")

# (hour, fraction of peak), piecewise linear, first point at 0 h and last at 24 h.
SHAPES: dict[str, tuple[tuple[float, float], ...]] = {
    # Two shifts with a lunch dip and a night base load (compressors, lighting, furnaces kept warm).
    "two_shift": (
        (0, 0.30),
        (6.5, 0.30),
        (7.5, 0.75),
        (8.5, 1.0),
        (11.5, 1.0),
        (12.0, 0.65),
        (13.0, 0.65),
        (13.5, 1.0),
        (17.5, 1.0),
        (18.0, 0.80),
        (22.0, 0.80),
        (22.5, 0.30),
        (24, 0.30),
    ),
    "one_shift": (
        (0, 0.20),
        (7.0, 0.20),
        (8.0, 0.90),
        (8.5, 1.0),
        (11.5, 1.0),
        (12.0, 0.55),
        (13.0, 0.55),
        (13.5, 1.0),
        (17.0, 1.0),
        (18.0, 0.25),
        (24, 0.20),
    ),
    # Continuous process (cement, chemicals): flat with a small daytime rise.
    "continuous": ((0, 0.90), (8.0, 0.95), (12.0, 1.0), (18.0, 0.95), (24, 0.90)),
    # A town feeder: night trough, morning and evening peaks.
    "town": (
        (0, 0.45),
        (5.0, 0.40),
        (7.0, 0.65),
        (9.0, 0.75),
        (11.5, 0.80),
        (13.0, 0.70),
        (17.0, 0.80),
        (19.5, 1.0),
        (21.5, 0.90),
        (23.0, 0.60),
        (24, 0.45),
    ),
    # Hospital, water works: high and steady, a daytime rise.
    "essential": ((0, 0.75), (7.0, 0.80), (9.0, 1.0), (17.0, 1.0), (20.0, 0.85), (24, 0.75)),
    "flat": ((0, 1.0), (24, 1.0)),
}


def local_hour(ts: datetime) -> float:
    t = ts.astimezone(CST)
    return t.hour + t.minute / 60 + t.second / 3600 + t.microsecond / 3.6e9


def shape_value(shape: str, hour: float) -> float:
    """Fraction of peak at a local hour (0 <= hour < 24)."""
    points = SHAPES[shape]
    i = bisect_right(points, (hour, float("inf"))) - 1
    i = max(0, min(i, len(points) - 2))
    (h0, v0), (h1, v1) = points[i], points[i + 1]
    return v0 + (v1 - v0) * (hour - h0) / (h1 - h0) if h1 > h0 else v0


def weekend_factor(ts: datetime, shape: str) -> float:
    """Industry slows on Sundays; feeders, essentials and continuous processes do not."""
    if shape in ("two_shift", "one_shift") and ts.astimezone(CST).weekday() == 6:
        return 0.6
    return 1.0
