"""Pile auth rows for the handshake: cached, and looked up in batches so that a thundering herd of
handshakes (a whole fleet reconnecting after a network cut) costs a few queries, not one pool connection
each.

A lookup that misses the cache joins the next batch; at most ``handshake_db_conns`` batches run at once,
each on one pool connection, so handshakes never exhaust the pool that sessions need. A batch that
cannot reach the database is retried until ``handshake_wait_s`` has passed: only a database that stays
away for that long turns into a refusal (503). Entries live ``auth_cache_ttl_s``; a password that does
not match a cached hash is checked again against a fresh row (a password just changed), and unknown
piles are never cached (a pile just added can connect at once).
"""

from __future__ import annotations

import asyncio
import logging
import time

from psycopg_pool import AsyncConnectionPool

from core.charging import registry
from core.charging.registry import PileAuth
from ocpp_server.settings import OcppSettings

log = logging.getLogger(__name__)
BATCH_MAX = 500


class RegistryUnavailable(Exception):
    pass


class AuthCache:
    def __init__(self, pool: AsyncConnectionPool, cfg: OcppSettings) -> None:
        self.pool = pool
        self.ttl_s = cfg.auth_cache_ttl_s
        self.wait_s = cfg.handshake_wait_s
        self._max = cfg.handshake_db_conns
        self._rows: dict[str, tuple[PileAuth, float]] = {}
        self._waiting: dict[str, list[asyncio.Future[PileAuth | None]]] = {}
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = 0

    async def get(self, ocpp_id: str, *, fresh: bool = False) -> PileAuth | None:
        """The pile's auth row (None: unknown). Raises RegistryUnavailable after ``handshake_wait_s``."""
        if not fresh:
            hit = self._rows.get(ocpp_id)
            if hit is not None and time.monotonic() - hit[1] < self.ttl_s:
                return hit[0]
        fut: asyncio.Future[PileAuth | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(ocpp_id, []).append(fut)
        self._maybe_start()
        return await fut

    def invalidate(self, ocpp_id: str | None = None) -> None:
        if ocpp_id is None:
            self._rows.clear()
        else:
            self._rows.pop(ocpp_id, None)

    async def preload(self) -> int:
        """Fill the cache with every pile (at start-up; failures only mean lookups later)."""
        try:
            async with self.pool.connection(timeout=self.wait_s) as conn:
                rows = await registry.load_auths(conn, None)
        except Exception as err:
            log.warning("pile auth preload failed", extra={"error": str(err)})
            return 0
        now = time.monotonic()
        for auth in rows:
            self._rows[auth.ocpp_id] = (auth, now)
        return len(rows)

    def _maybe_start(self) -> None:
        """A new batch when a slot is free and there is work nobody has taken (a running batch takes
        at most BATCH_MAX lookups)."""
        if (
            self._waiting
            and self._running < self._max
            and (self._running == 0 or len(self._waiting) >= BATCH_MAX)
        ):
            self._running += 1
            task = asyncio.create_task(self._batch(), name="ocpp-auth-batch")
            self._tasks.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("auth batch failed", exc_info=task.exception())
        if self._waiting and self._running == 0:
            self._maybe_start()

    async def _batch(self) -> None:
        await asyncio.sleep(0.002)  # let the handshakes arriving together join this batch
        ids = list(self._waiting)[:BATCH_MAX]
        futures = {i: self._waiting.pop(i) for i in ids}
        if not ids:
            return
        deadline = time.monotonic() + self.wait_s
        delay = 0.1
        while True:
            try:
                async with self.pool.connection(timeout=max(0.1, deadline - time.monotonic())) as conn:
                    rows = await registry.load_auths(conn, ids)
                self.queries += 1
                break
            except Exception as err:
                if time.monotonic() + delay >= deadline:
                    log.error(
                        "registry unavailable at handshake", extra={"piles": len(ids), "error": str(err)}
                    )
                    for futs in futures.values():
                        for f in futs:
                            if not f.done():
                                f.set_exception(RegistryUnavailable(str(err)))
                    return
                log.warning("registry lookup retried", extra={"piles": len(ids), "error": str(err)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        now = time.monotonic()
        found = {a.ocpp_id: a for a in rows}
        for auth in rows:
            self._rows[auth.ocpp_id] = (auth, now)
        for i, futs in futures.items():
            for f in futs:
                if not f.done():
                    f.set_result(found.get(i))
