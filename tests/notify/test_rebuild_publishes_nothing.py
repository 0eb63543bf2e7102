"""A notify built for a rebuild (CLAMEUR_NOTIFY_SEND=false) publishes nothing on the live topics."""

from __future__ import annotations

import asyncio

from asgi_lifespan import LifespanManager
from notify.app import create_app
from notify.settings import NotifySettings

from clameur.topics import Topics
from tests.conftest import TEST_ERASURE_BOUND_S, Infra
from tests.support import read_topic, settings_from


async def run_for(env: dict[str, str], seconds: float) -> None:
    async with LifespanManager(create_app(settings_from(NotifySettings, env)), startup_timeout=60):
        await asyncio.sleep(seconds)


async def test_without_sending_no_ticks_no_retention_no_tombstone_while_a_live_notify_ticks(
    notify_env: dict[str, str], infra: Infra, topics: Topics
) -> None:
    # Ticks come every quarter of the bound: two bounds' time is eight chances to tick.
    span = 2 * TEST_ERASURE_BOUND_S
    await run_for({**notify_env, "CLAMEUR_NOTIFY_SEND": "false", "CLAMEUR_RETENTION_INTERVAL_S": "0.2"}, span)
    assert await read_topic(infra.kafka, topics.contacts) == []
    assert await read_topic(infra.kafka, topics.suppressions) == []
    assert await read_topic(infra.kafka, topics.signatures) == []
    # The same notify sending: it ticks (what the rebuild's silence is measured against).
    await run_for(notify_env, span)
    assert await read_topic(infra.kafka, topics.contacts, at_least=1) != []
