"""uvicorn as one task among others: cancellation (not uvicorn's own signal handling) stops it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The process's signals belong to core.service.run, which cancels the whole task group.
        yield


async def serve_api(app: FastAPI, host: str, port: int, started: asyncio.Event | None = None) -> None:
    server = _EmbeddedServer(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if serving.done():
                await serving  # raises the startup error (port taken, ...)
                raise RuntimeError(f"API server on {host}:{port} stopped during startup")
            await asyncio.sleep(0.05)
        if started:
            started.set()
        await asyncio.shield(serving)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(serving, 5)
