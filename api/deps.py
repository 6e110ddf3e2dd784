"""FastAPI dependencies, as ``Annotated`` aliases: ``conn: ConnDep``, ``scope: ScopeDep``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from api.queries import Scope
from core.settings import Settings

# How long a request waits for a pooled connection before it gets a 503.
CONNECTION_TIMEOUT_S = 5.0


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with get_pool(request).connection(timeout=CONNECTION_TIMEOUT_S) as conn:
        yield conn


def get_scope() -> Scope:
    """What the caller may see. Everything, until authentication arrives (a later issue): then this
    becomes the tenant(s) of the authenticated user, and every query already filters by it."""
    return Scope()


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
ConnDep = Annotated[psycopg.AsyncConnection[Any], Depends(get_conn)]
ScopeDep = Annotated[Scope, Depends(get_scope)]
