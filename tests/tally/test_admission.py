"""Tally's public reads under a crowd: the live streams are capped, and a full cap refuses at once
while the counts, health and metrics keep answering (a real uvicorn, real streams)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
from tally.settings import TallySettings

from tests.support import metric, settings_from
from tests.tally.conftest import served
from tests.tally.helpers import ADMIN, case_body

CAP = 2


async def test_past_the_live_cap_a_stream_is_refused_and_the_counts_still_answer(
    tally_env: dict[str, str], new_id: Any
) -> None:
    settings: TallySettings = settings_from(
        TallySettings, tally_env, tally_live_max_streams=CAP, tally_live_interval_s=0.2
    )
    case_id = new_id("nawal")
    async with served(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        created = await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        assert created.status_code == 201
        async with AsyncExitStack() as streams:
            lines = []  # kept: a line iterator dropped would close its stream
            for _ in range(CAP):
                stream = await streams.enter_async_context(client.stream("GET", f"/v1/cases/{case_id}/live"))
                assert stream.status_code == 200
                lines.append(stream.aiter_lines())
                await asyncio.wait_for(anext(lines[-1]), 10)  # the stream is open and served
            scraped = (await client.get("/metrics")).text
            assert metric(scraped, "clameur_admission_in_flight", lane="live") == CAP

            one_more = await client.get(
                f"/v1/cases/{case_id}/live", headers={"Origin": "https://free-nawal.example"}
            )
            count = await client.get(f"/v1/cases/{case_id}")
            cases = await client.get("/v1/cases")
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
        scraped = (await client.get("/metrics")).text

    assert one_more.status_code == 503
    assert 1 <= int(one_more.headers["retry-after"]) <= 5
    assert one_more.headers["access-control-allow-origin"] == "https://free-nawal.example"
    assert one_more.json()["reason"] == "overloaded"
    assert count.status_code == 200
    assert count.json()["id"] == case_id
    assert cases.status_code == 200
    assert (health.status_code, ready.status_code) == (200, 200)
    assert metric(scraped, "clameur_admission_requests_total", lane="live", outcome="refused") == 1
    assert metric(scraped, "clameur_admission_requests_total", lane="reads", outcome="refused") == 0
