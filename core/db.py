"""Database access: the connection pool and the versioned migrations.

Migrations are the SQL files in ``core/migrations`` (``NNNN_name.sql``), applied in order, each in its
own transaction, under an advisory lock so that concurrent starters never race. Applying is idempotent:
a file already recorded in ``schema_migrations`` is skipped (and its checksum checked, because an
applied migration must never change).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from core.metrics import CATALOGUE
from core.settings import DatabaseSettings

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x6C6973687569  # "lishui"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("core.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append(Migration(int(version), name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if len({m.version for m in found}) != len(found):
        raise RuntimeError("two migrations share a version number")
    return found


class MigrationError(RuntimeError):
    pass


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations and sync the metric catalogue; returns the names applied."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
            done = {v: c for v, c in await cur.fetchall()}
            for m in migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(f"migration {m.version}_{m.name} changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                log.info("migration applied", extra={"migration": f"{m.version:04d}_{m.name}"})
                applied.append(f"{m.version:04d}_{m.name}")
            await _sync_catalogue(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


async def _sync_catalogue(conn: psycopg.AsyncConnection) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO metrics (id, name, unit, kind, description) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, unit = EXCLUDED.unit,"
            " kind = EXCLUDED.kind, description = EXCLUDED.description",
            [(m.id, m.name, m.unit, m.kind.value, m.description) for m in CATALOGUE],
        )


def with_database(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it does not exist (connecting to ``postgres``); True if created."""
    dbname = urlsplit(dsn).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(with_database(dsn, "postgres"), autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if await cur.fetchone():
            return False
        await conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
        return True


def create_pool(settings: DatabaseSettings, name: str) -> AsyncConnectionPool:
    """A pool that is opened by ``async with``; connections carry the service's name for pg_stat_activity."""
    return AsyncConnectionPool(
        settings.dsn,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        kwargs={"application_name": f"lishui-{name}"},
        open=False,
        # Connections are checked before use, so a restarted database costs one retry, not an error.
        check=AsyncConnectionPool.check_connection,
    )
