"""``/readyz`` names the dependency that is down, never what its error said."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from clameur.web import install_problem_handlers, operations_router

SECRET_TEXT = "password=hunter2 host=db.internal.example"


async def _answers() -> None:
    return None


async def _refuses() -> None:
    raise ConnectionRefusedError(SECRET_TEXT)


async def test_a_dependency_down_is_named_without_its_error_text(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(operations_router(CollectorRegistry(), {"kafka": _refuses, "postgres": _answers}))
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.WARNING, logger="clameur.web"):
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
            answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "5"
    body = answer.json()
    assert body["down"] == ["kafka"]
    assert body["checks"] == ["kafka", "postgres"]
    assert "hunter2" not in answer.text and "db.internal" not in answer.text
    # The log says which check and the error's type, not its text.
    (record,) = [record for record in caplog.records if record.getMessage() == "readiness check failed"]
    assert (record.__dict__["check"], record.__dict__["error"]) == ("kafka", "ConnectionRefusedError")
    assert "hunter2" not in caplog.text
