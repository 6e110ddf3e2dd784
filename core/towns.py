"""The county's 19 towns and subdistricts (镇街) by key, as seeded by migration 0002_towns.sql."""

from __future__ import annotations

TOWN_KEYS: tuple[str, ...] = (
    "liyang", "lipu", "lixi", "lidan",  # the four subdistricts (街道) of the county seat
    "xiaodukou", "mengxi", "fuxingchang", "yanjing", "wangjiachang", "chengtoushan", "jinluo",
    "matoupu", "cennan", "dayandang", "ganxitan", "huolianpo", "rudong", "guanyuan", "linan",
)  # fmt: skip
