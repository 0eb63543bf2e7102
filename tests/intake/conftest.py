"""Intake under test: the real app (lifespan and all) on a real broker, driven over ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from intake.app import create_app
from intake.settings import IntakeSettings

from clameur.events import Action, CaseState, CaseStatus, Victory
from clameur.kafka import partitions_of
from clameur.topics import Topics
from tests.support import eventually

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


async def read_topic(bootstrap: str, topic: str, *, at_least: int = 0, within: float = 10.0) -> list[Any]:
    """Every record on ``topic`` from the start; waits up to ``within`` s for ``at_least``.

    With ``at_least=0`` it reads for a short moment and returns what is there (to show
    that nothing was published).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + (within if at_least else 1.0)
        while asyncio.get_running_loop().time() < deadline:
            fetched = await consumer.getmany(timeout_ms=200)
            for batch in fetched.values():
                records.extend(batch)
            if at_least and len(records) >= at_least:
                break
        return records
    finally:
        await consumer.stop()


def settings_for(service_env: dict[str, str], **overrides: Any) -> IntakeSettings:
    """Intake settings for this test's broker and topics, plus ``overrides`` by field name."""
    shared = {
        key.removeprefix("CLAMEUR_").lower(): value
        for key, value in service_env.items()
        if key.startswith("CLAMEUR_")
    }
    return IntakeSettings(**{**shared, **overrides})


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
def intake(service_env: dict[str, str]) -> Intake:
    """``async with intake(**settings) as (app, client)``: intake on this test's topics."""

    def start(**overrides: Any) -> Any:
        return running(settings_for(service_env, **overrides))

    return start


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, label_part = sample.partition("{")
        if sample_name != name:
            continue
        found = ",".join(sorted(label_part.rstrip("}").split(","))) if label_part else ""
        if found == wanted:
            return float(value)
    return 0.0
