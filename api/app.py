"""The API application: ``create_app(settings)``; run with ``uvicorn --factory api.app:main_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import PoolTimeout

from api.observability import instrument
from api.routes import router
from api.routes_charging import router as charging_router
from api.routes_dr import router as dr_router
from api.routes_forecast import router as forecast_router
from core.db import create_pool
from core.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The pool opens without waiting for the database: the API starts (and /health says 503)
        # while the database is away, and requests get 503 instead of hanging.
        async with create_pool(settings.db, "api") as pool:
            app.state.pool = pool
            yield

    app = FastAPI(
        title="Lishui API",
        version="1",
        description="Registry, latest values and time series of the county's energy devices.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    app.include_router(charging_router)
    app.include_router(dr_router)
    app.include_router(forecast_router)
    instrument(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "database unavailable, try again"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    return app


def main_app() -> FastAPI:  # pragma: no cover - for uvicorn --factory
    return create_app(get_settings())
