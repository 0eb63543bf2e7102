"""Notify's wiring: ready once its lifespan has opened everything, not before, not after."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager
from notify.app import create_app
from notify.settings import NotifySettings

from tests.support import settings_from


async def test_readiness_follows_the_lifespan(notify_env: dict[str, str]) -> None:
    app = create_app(settings_from(NotifySettings, notify_env))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://clameur.example.org") as client:
        before = await client.get("/readyz")
        assert before.status_code == 503
        assert sorted(before.json()["checks"]) == ["kafka", "loops", "postgres"]
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "checks": ["kafka", "loops", "postgres"]}
        after = await client.get("/readyz")
        assert after.status_code == 503
