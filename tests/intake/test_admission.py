"""Intake past its bound, on the real broker: refused at once, nothing refused published, every 202 kept.

The admitted requests are held in flight by their own bodies (sent only when the test
lets them go), so the bound is shown reached, on intake's own in-flight gauge, before
the crowd beyond it is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from clameur.events import decode_signature
from clameur.topics import Topics
from tests.conftest import Infra
from tests.intake.conftest import SIGNER, Intake
from tests.support import eventually, metric, read_topic

BOUND = 4


def _signer(n: int) -> dict[str, str]:
    return {**SIGNER, "email": f"supporter{n}@example.org"}


async def _held(gate: asyncio.Event, document: Any) -> AsyncIterator[bytes]:
    await gate.wait()
    yield orjson.dumps(document)


async def _in_flight(client: httpx.AsyncClient) -> float:
    return metric((await client.get("/metrics")).text, "clameur_admission_in_flight", lane="signatures")


async def test_past_its_bound_intake_refuses_at_once_and_publishes_only_what_it_accepted(
    intake: Intake, nawal: str, infra: Infra, topics: Topics
) -> None:
    url = f"/v1/cases/{nawal}/signatures"
    json_type = {"content-type": "application/json"}
    gate = asyncio.Event()
    async with intake(intake_max_in_flight=BOUND, rate_limit_ip_burst=0) as (_, client):
        held = [
            asyncio.create_task(client.post(url, content=_held(gate, _signer(n)), headers=json_type))
            for n in range(BOUND)
        ]

        async def full() -> bool:
            return await _in_flight(client) == BOUND

        await eventually(full, within=10, what="the signatures lane at its bound")
        started = time.perf_counter()
        crowd = await asyncio.gather(*(client.post(url, json=_signer(100 + n)) for n in range(40)))
        refusing_took = time.perf_counter() - started
        health = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
        gate.set()
        admitted = await asyncio.gather(*held)
        after = await client.post(url, json=_signer(999))
        scraped = (await client.get("/metrics")).text

    assert {answer.status_code for answer in crowd} == {503}, [a.status_code for a in crowd]
    assert refusing_took < 2.0, f"40 refusals took {refusing_took:.2f} s"
    for answer in crowd:
        assert 1 <= int(answer.headers["retry-after"]) <= 5
        assert answer.headers["content-type"] == "application/problem+json"
        assert "busy" in answer.json()["detail"]
    assert [answer.status_code for answer in health] == [200, 200, 200]
    assert [answer.status_code for answer in admitted] == [202] * BOUND
    assert after.status_code == 202  # the bound frees as the held ones finish

    accepted = {answer.json()["signature_id"] for answer in [*admitted, after]}
    records = await read_topic(infra.kafka, topics.signatures, at_least=len(accepted))
    published = [str(decode_signature(record.value).signature_id) for record in records]
    assert sorted(published) == sorted(accepted)  # each once, and nothing refused
    assert metric(scraped, "clameur_intake_signatures_accepted_total") == len(accepted)
    assert metric(scraped, "clameur_admission_requests_total", lane="signatures", outcome="refused") == 40
    assert metric(scraped, "clameur_admission_requests_total", lane="signatures", outcome="admitted") == 5
    assert metric(scraped, "clameur_intake_rejections_total") == 0  # refused before the desk saw them


async def test_bulk_imports_have_their_own_places(intake: Intake, nawal: str) -> None:
    """Partners' bulk requests filling their lane leave the widget's signatures untouched."""
    url = f"/v1/cases/{nawal}/signatures"
    gate = asyncio.Event()
    json_type = {"content-type": "application/json", "authorization": "Bearer partner-secret"}
    overrides = {"intake_bulk_max_in_flight": 1, "partner_keys": {"partner-secret": "amnesty"}}
    async with intake(rate_limit_ip_burst=0, **overrides) as (_, client):
        held = _held(gate, {"signatures": [_signer(0)]})
        batch = asyncio.create_task(client.post(f"{url}/batch", content=held, headers=json_type))

        async def full() -> bool:
            scraped = (await client.get("/metrics")).text
            return metric(scraped, "clameur_admission_in_flight", lane="bulk") == 1

        await eventually(full, within=10, what="the bulk lane at its bound")
        second = await client.post(f"{url}/batch", json={"signatures": [_signer(1)]}, headers=json_type)
        widget = await client.post(url, json=_signer(2))
        gate.set()
        first = await batch
    assert first.status_code == 202, first.text
    assert second.status_code == 503
    assert widget.status_code == 202
