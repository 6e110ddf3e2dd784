"""Fixtures on real services: a fresh TimescaleDB database per test run, the real Mosquitto, and a
topic root of the run's own so concurrent runs never see each other's messages.

The server comes from LISHUI_TEST_DSN (default: the local PostgreSQL that `make test` sets up).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest

from api.app import create_app
from core import db
from core.settings import DatabaseSettings, Settings

SERVER_DSN = os.environ.get("LISHUI_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def db_dsn() -> Iterator[str]:
    """A freshly created and migrated database, dropped after the run."""
    name = f"lishui_test_{RUN_ID}"
    dsn = db.with_database(SERVER_DSN, name)
    asyncio.run(db.ensure_database(dsn))
    asyncio.run(db.migrate(dsn))
    yield dsn
    with psycopg.connect(db.with_database(SERVER_DSN, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}_e2e" WITH (FORCE)')


@pytest.fixture(scope="session")
def settings(db_dsn: str) -> Settings:
    return Settings(
        db=DatabaseSettings(dsn=db_dsn),
        topic_root=f"lishui-test-{RUN_ID}",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API over ASGI (lifespan run: its pool open) on the test database, one per module."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Chaos tests stop and restart the broker and the database: run them after everything else."""
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)
