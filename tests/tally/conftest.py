"""Fixtures of tally's tests: settings, a pool, the app in process, a served app."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from tally.app import create_app
from tally.settings import TallySettings

from clameur.database import create_pool
from tests.support import free_port, settings_from


@pytest.fixture
def tally_env(service_env: dict[str, str]) -> dict[str, str]:
    """service_env with a consumer group of this test's own and short batches."""
    return {
        **service_env,
        "CLAMEUR_TALLY_GROUP_ID": f"tally-{uuid.uuid4().hex[:8]}",
        "CLAMEUR_TALLY_READ_CACHE_S": "0",
        "CLAMEUR_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def tally_settings(tally_env: dict[str, str]) -> TallySettings:
    return settings_from(TallySettings, tally_env)


@pytest.fixture
async def pool(infra: Any) -> AsyncIterator[asyncpg.Pool[Any]]:
    created = await create_pool(infra.database_url, min_size=1, max_size=4)
    yield created
    await created.close()


@asynccontextmanager
async def running(settings: TallySettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan started, and a client that calls it in process."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=40) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
            yield app, client


@pytest.fixture
def tally() -> Callable[[TallySettings], AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]:
    return running


@asynccontextmanager
async def served(settings: TallySettings) -> AsyncIterator[str]:
    """The app behind a real uvicorn server on a free loopback port (for streaming); yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 40)
