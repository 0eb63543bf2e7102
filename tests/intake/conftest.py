"""Intake under test: the real app (lifespan and all) on a real broker, driven over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from intake.app import create_app
from intake.settings import IntakeSettings

from clameur.events import Action, CaseState, CaseStatus, Victory
from clameur.topics import Topics
from tests.conftest import Infra
from tests.support import eventually, settings_from

SIGNER = {
    "first_name": "Camille",
    "last_name": "Durand",
    "email": "camille.durand@example.org",
    "country": "FR",
}


def case_state(case_id: str, **changes: Any) -> CaseState:
    fields: dict[str, Any] = {
        "case_id": case_id,
        "version": 1,
        "title": {"fr": "Libérez Nawal Benaissa", "en": "Free Nawal Benaissa"},
        "goal": 100_000,
        "actions": (Action.SIGNATURE, Action.LETTER),
        "locales": ("fr", "en"),
        "default_locale": "fr",
    }
    fields.update(changes)
    return CaseState(**fields)


def won_state(case_id: str) -> CaseState:
    return case_state(
        case_id,
        version=2,
        status=CaseStatus.WON,
        victory=Victory(
            headline={"fr": "Nawal Benaissa est libre !", "en": "Nawal Benaissa is free!"},
            message={"fr": "Merci.", "en": "Thank you."},
            declared_at=datetime.now(UTC),
        ),
    )


async def publish_cases(bootstrap: str, topics: Topics, *states: CaseState) -> None:
    """What tally's outbox does: each case's state on the compacted cases topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for state in states:
            await producer.send_and_wait(topics.cases, state.to_json(), key=state.case_id.encode())
    finally:
        await producer.stop()


def settings_for(service_env: dict[str, str], **overrides: Any) -> IntakeSettings:
    """Intake settings for this test's broker and topics, plus ``overrides`` by field name."""
    return settings_from(IntakeSettings, service_env, **overrides)


@asynccontextmanager
async def running(
    settings: IntakeSettings, *, wait_ready: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app started (lifespan) and a client talking to it in-process from 127.0.0.1."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://intake.test") as client:
            if wait_ready:

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await eventually(ready, within=30, what="intake ready")
            yield app, client


Intake = Callable[..., Any]


@pytest.fixture
async def nawal(infra: Infra, topics: Topics, new_id: Callable[[str], str]) -> str:
    """An open case (signature and letter; French and English) on this test's cases topic."""
    case_id = new_id("nawal")
    await publish_cases(infra.kafka, topics, case_state(case_id))
    return case_id


@pytest.fixture
async def atena(infra: Infra, topics: Topics, new_id: Callable[[str], str]) -> str:
    """An open case that asks its signers to confirm by email, on this test's cases topic."""
    case_id = new_id("atena")
    await publish_cases(infra.kafka, topics, case_state(case_id, confirmation="email"))
    return case_id


@pytest.fixture
def intake(service_env: dict[str, str]) -> Intake:
    """``async with intake(**settings) as (app, client)``: intake on this test's topics."""

    def start(**overrides: Any) -> Any:
        return running(settings_for(service_env, **overrides))

    return start


def answer_json(handler: BaseHTTPRequestHandler, document: dict[str, Any]) -> None:
    """Answer ``handler``'s request with 200 and ``document`` as JSON (fake remote services)."""
    body = orjson.dumps(document)
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
