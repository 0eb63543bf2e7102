"""The broker stops mid-surge: 503 with Retry-After, never a 202, and recovery without restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from clameur.events import decode_contact, decode_signature
from clameur.topics import Topics, ensure_topics
from tests.intake.conftest import SIGNER, case_state, publish_cases, running, settings_for
from tests.support import metric, read_topic

pytestmark = pytest.mark.slow


async def _sign_until(
    client: httpx.AsyncClient, url: str, status: int, within: float
) -> list[httpx.Response]:
    """POST signatures until one answers ``status``; every answer on the way is returned."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        answer = await client.post(url, json=SIGNER)
        answers.append(answer)
        if answer.status_code == status:
            return answers
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {status} within {within} s: {[a.status_code for a in answers]}")


@pytest.mark.parametrize("reset_after", [60.0, 2.0], ids=["aiokafka-recovers", "producer-replaced"])
async def test_a_stopped_broker_gives_503_and_intake_recovers_when_it_returns(
    spare_kafka: Any,
    service_env: dict[str, str],
    new_id: Callable[[str], str],
    reset_after: float,
) -> None:
    topics = Topics(prefix="spare.")
    await ensure_topics(spare_kafka.bootstrap, topics, signature_partitions=3)
    case_id = new_id("nawal")
    # A confirmation case: every signature also writes a contact, both through the outage.
    await publish_cases(spare_kafka.bootstrap, topics, case_state(case_id, confirmation="email"))
    settings = settings_for(
        service_env,
        kafka=spare_kafka.bootstrap,
        topic_prefix=topics.prefix,
        broker_ack_timeout=1.0,
        producer_reset_after=reset_after,
    )
    url = f"/v1/cases/{case_id}/signatures"
    async with running(settings) as (app, client):
        before = await client.post(url, json=SIGNER)
        assert before.status_code == 202

        await asyncio.to_thread(spare_kafka.stop)
        during = [await client.post(url, json=SIGNER) for _ in range(3)]
        # Concurrent requests too: the fail-fast gate must not let one through as 202.
        during += await asyncio.gather(*(client.post(url, json=SIGNER) for _ in range(20)))
        assert {answer.status_code for answer in during} == {503}
        for answer in during:
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.headers["content-type"] == "application/problem+json"
        if reset_after < 10:
            await asyncio.sleep(reset_after + 1.5)  # long enough for the supervisor to give up on it
            late = await client.post(url, json=SIGNER)
            assert late.status_code == 503

        await asyncio.to_thread(spare_kafka.start)
        recovered = await _sign_until(client, url, 202, within=60)
        assert all(answer.status_code in (202, 503) for answer in recovered)
        metrics = (await client.get("/metrics")).text
        replacements = app.state.intake.current.publisher.replacements

    if reset_after < 10:
        assert replacements >= 1
    assert metric(metrics, "clameur_intake_rejections_total", reason="broker") >= len(during)
    assert metric(metrics, "clameur_intake_produce_errors_total") >= 1
    # Every 202 is on the topic: the one before the outage and the one after.
    records = await read_topic(spare_kafka.bootstrap, topics.signatures, at_least=2, within=15)
    ids = {str(decode_signature(record.value).signature_id) for record in records}
    assert before.json()["signature_id"] in ids
    assert recovered[-1].json()["signature_id"] in ids
    # Their contacts too: a 202 promised both (every signature here is by one supporter).
    contacts = await read_topic(spare_kafka.bootstrap, topics.contacts, at_least=2, within=15)
    assert {decode_contact(record.value).supporter_key for record in contacts} == {
        decode_signature(record.value).supporter_key for record in records
    }
