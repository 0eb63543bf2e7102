"""The live stream: Server-Sent Events that push a case's count when it moves."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from tally.settings import TallySettings

from clameur.topics import Topics
from tests.support import settings_from
from tests.tally.conftest import served
from tests.tally.helpers import ADMIN, case_body, many, produce


async def _events(response: httpx.Response) -> Any:
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event.get("event") == "count":
                yield orjson.loads(event["data"])
            event = {}
            continue
        name, _, value = line.partition(":")
        event[name] = value.strip()


async def test_the_live_stream_pushes_the_count_when_it_changes(
    tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any
) -> None:
    settings: TallySettings = settings_from(TallySettings, tally_env, tally_live_interval_s=0.2)
    case_id = new_id("nawal")
    async with served(settings) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        assert (
            await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        ).status_code == 201
        assert (await client.get(f"/v1/cases/{new_id()}/live")).status_code == 404
        async with client.stream("GET", f"/v1/cases/{case_id}/live") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            counts = _events(response)
            first = await asyncio.wait_for(anext(counts), 10)
            assert first["total"] == 0
            await produce(infra.kafka, topics.signatures, many(case_id, 25, countries=("FR",)))
            seen = first
            while seen["total"] < 25:
                seen = await asyncio.wait_for(anext(counts), 15)
                assert seen["total"] > 0
            assert seen["by_country"] == {"FR": 25}
