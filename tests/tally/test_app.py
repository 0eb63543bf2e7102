"""Tally's wiring: routes mounted before the start answer 503, the consumer is restarted."""

from __future__ import annotations

import asyncio

import httpx
from tally.app import _supervised, create_app
from tally.settings import TallySettings

from tests.tally.helpers import ADMIN, case_body

PROBLEM = "application/problem+json"


async def test_before_the_start_every_route_is_there_and_answers_503(tally_settings: TallySettings) -> None:
    transport = httpx.ASGITransport(app=create_app(tally_settings))  # no lifespan: nothing started
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        read = await client.get("/v1/cases/nawal-benaissa")
        created = await client.post("/v1/admin/cases", json=case_body("nawal-benaissa"), headers=ADMIN)
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    for answer in (read, created, ready):
        assert answer.status_code == 503 and answer.headers["content-type"] == PROBLEM, answer.text
    assert read.headers["retry-after"] == "5"
    assert alive.status_code == 200


async def test_a_failing_consumer_is_restarted_until_it_runs_to_its_end() -> None:
    runs: list[int] = []

    async def run() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise ConnectionError("broker away")

    await asyncio.wait_for(_supervised(run, asyncio.Event(), "signature consumer"), 10)
    assert runs == [0, 1, 2]


async def test_a_consumer_failing_while_stopping_is_not_restarted_and_ends_quietly() -> None:
    stopping = asyncio.Event()
    runs: list[int] = []

    async def run() -> None:
        runs.append(len(runs))
        stopping.set()
        raise ConnectionError("broker away")

    await asyncio.wait_for(_supervised(run, stopping, "signature consumer"), 10)
    assert runs == [0]
