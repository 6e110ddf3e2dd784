"""Write-behind for what a pile's handler need not wait for: connector statuses and connections.

A StatusNotification is answered at once; the status goes into a map (the latest per connector wins)
that one task writes in a single statement every ``delay_s``, so a fleet booting at once (every pile
reporting every connector) costs a few statements, not a pool checkout per message. A failed write is
kept and retried with what came in meanwhile (newer statuses win).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from core.charging import registry

log = logging.getLogger(__name__)
Key = tuple[int, int, int]  # device, evse, connector


class StatusWriter:
    def __init__(self, pool: AsyncConnectionPool, delay_s: float = 0.05) -> None:
        self.pool = pool
        self.delay_s = delay_s
        self._pending: dict[Key, tuple[str, str | None, datetime]] = {}
        self._wake = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None
        self.writes = 0

    def put(self, key: Key, status: str, error_code: str | None, at: datetime) -> None:
        self._pending[key] = (status, error_code, at)
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay_s)
            self._wake.clear()
            batch, self._pending = self._pending, {}
            try:
                # shielded: a statement cut off by a cancellation could leave its row locks behind
                self._writing = asyncio.ensure_future(self._write(batch))
                await asyncio.shield(self._writing)
                self.writes += 1
                backoff = 0.5
            except Exception as err:
                log.warning(
                    "connector statuses not stored yet", extra={"rows": len(batch), "error": str(err)}
                )
                self._pending = {**batch, **self._pending}
                self._wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _write(self, batch: dict[Key, tuple[str, str | None, datetime]]) -> None:
        async with self.pool.connection() as conn:
            await registry.set_connector_statuses(conn, [(*k, *v) for k, v in batch.items()])

    async def flush(self, limit_s: float = 5.0) -> None:
        """Write what is pending now (at shutdown, after ``run`` stopped)."""
        async with asyncio.timeout(limit_s):
            if self._writing is not None:
                await asyncio.gather(self._writing, return_exceptions=True)
            batch, self._pending = self._pending, {}
            if batch:
                await self._write(batch)


class ConnectionNotes:
    """Records connections (version, node, time) in batches; hands each pile its current lifecycle (the
    handshake's auth row may be a cached one)."""

    def __init__(self, pool: AsyncConnectionPool, delay_s: float = 0.05) -> None:
        self.pool = pool
        self.delay_s = delay_s
        self._pending: dict[int, tuple[str, str, Callable[[str], None]]] = {}
        self._wake = asyncio.Event()

    def put(self, device_id: int, version: str, node: str, on_lifecycle: Callable[[str], None]) -> None:
        self._pending[device_id] = (version, node, on_lifecycle)
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay_s)
            self._wake.clear()
            batch, self._pending = self._pending, {}
            try:
                rows = [(dev, version, node) for dev, (version, node, _) in batch.items()]
                lifecycles = await asyncio.shield(self._write(rows))
                backoff = 0.5
            except Exception as err:
                log.warning("connections not recorded yet", extra={"piles": len(batch), "error": str(err)})
                self._pending = {**batch, **self._pending}
                self._wake.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            for dev, (_, _, on_lifecycle) in batch.items():
                if dev in lifecycles:
                    on_lifecycle(lifecycles[dev])

    async def _write(self, rows: list[tuple[int, str, str]]) -> dict[int, str]:
        async with self.pool.connection() as conn:
            return await registry.note_connections(conn, rows)


class BootDecider:
    """BootNotifications answered in batches: piles booting together (a fleet after a power cut) are
    decided in one transaction of a few statements, not one transaction each. Same rule, same records
    as ``registry.decide_boot``; a pile booting twice in one batch waits for the next."""

    def __init__(self, pool: AsyncConnectionPool, delay_s: float = 0.005, batch_max: int = 500) -> None:
        self.pool = pool
        self.delay_s = delay_s
        self.batch_max = batch_max
        self._waiting: list[tuple[int, registry.BootInfo, asyncio.Future[registry.BootDecision]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def decide(self, device_id: int, boot: registry.BootInfo) -> registry.BootDecision:
        fut: asyncio.Future[registry.BootDecision] = asyncio.get_running_loop().create_future()
        self._waiting.append((device_id, boot, fut))
        if not self._running:
            self._running = True
            self._task = asyncio.create_task(self._run(), name="ocpp-boot-batch")
        return await fut

    async def _run(self) -> None:
        try:
            await self._batches()
        finally:
            self._running = False  # at once, not in a done callback: a boot arriving now starts a new run
            if self._waiting:
                self._running = True
                self._task = asyncio.create_task(self._run(), name="ocpp-boot-batch")

    async def _batches(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.delay_s)
            batch: dict[int, tuple[registry.BootInfo, asyncio.Future[registry.BootDecision]]] = {}
            rest = []
            for dev, boot, fut in self._waiting:
                if dev in batch or len(batch) >= self.batch_max or fut.done():
                    rest.append((dev, boot, fut))
                else:
                    batch[dev] = (boot, fut)
            self._waiting = [r for r in rest if not r[2].done()]
            if not batch:
                continue
            try:
                # shielded: a statement cut off by a cancellation could leave its row locks behind
                decisions = await asyncio.shield(self._write({d: b for d, (b, _) in batch.items()}))
            except Exception as err:
                for _, fut in batch.values():
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for dev, (_, fut) in batch.items():
                if not fut.done():
                    fut.set_result(decisions[dev])

    async def _write(self, boots: dict[int, registry.BootInfo]) -> dict[int, registry.BootDecision]:
        async with self.pool.connection() as conn:
            return await registry.decide_boots(conn, boots)
