"""Cases' confirmation policy and small counts: what the public sees, what operators see."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
from tally.settings import TallySettings

from clameur.topics import Topics
from tests.support import eventually, settings_from
from tests.tally.conftest import served
from tests.tally.helpers import ADMIN, case_body, many, produce, signature
from tests.tally.test_live import _events


async def test_a_case_s_policy_is_set_changed_and_published(
    tally: Any, tally_settings: TallySettings, new_id: Any, pool: asyncpg.Pool[Any], topics: Topics
) -> None:
    case_id = new_id("nawal")
    async with tally(tally_settings) as (_, client):
        created = (await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)).json()
        assert (created["confirmation"], created["small_count_threshold"], created["retention_days"]) == (
            "email",
            5,
            180,
        )
        patched = await client.patch(
            f"/v1/admin/cases/{case_id}",
            json={"confirmation": "none", "small_count_threshold": 10, "retention_days": 30},
            headers=ADMIN,
        )
        assert patched.status_code == 200, patched.text
        bad = await client.patch(f"/v1/admin/cases/{case_id}", json={"confirmation": "sms"}, headers=ADMIN)
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        public = (await client.get(f"/v1/cases/{case_id}")).json()
        assert public["confirmation"] == "none" and public["pending"] == 0
        assert "small_count_threshold" not in public and "retention_days" not in public
    states = await pool.fetch(
        "SELECT payload FROM tally.outbox WHERE topic = $1 AND key = $2 ORDER BY id", topics.cases, case_id
    )
    published = [(s["payload"]["confirmation"], s["payload"]["small_count_threshold"]) for s in states]
    assert published == [("email", 5), ("none", 10)]
    assert states[-1]["payload"]["retention_days"] == 30


async def test_small_country_counts_are_folded_for_the_public_not_for_operators(
    tally_env: dict[str, str], topics: Topics, infra: Any, new_id: Any
) -> None:
    settings: TallySettings = settings_from(TallySettings, tally_env, tally_live_interval_s=0.2)
    case_id = new_id("atena")
    signatures = [
        *many(case_id, 6, countries=("FR",)),
        *many(case_id, 2, countries=("IR",), tag="ir"),
        *many(case_id, 1, countries=("MA",), tag="ma"),
        signature(case_id, "waiting@example.org", country="IR", awaits_confirmation=True),
    ]
    async with served(settings) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        body = case_body(case_id, confirmation="none")
        assert (await client.post("/v1/admin/cases", json=body, headers=ADMIN)).status_code == 201
        await produce(infra.kafka, topics.signatures, signatures)

        async def counted() -> bool:
            document = (await client.get(f"/v1/cases/{case_id}")).json()
            return bool(document["total"] == 9 and document["pending"] == 1)

        await eventually(counted, within=20, what="9 counted and 1 pending")
        public = (await client.get(f"/v1/cases/{case_id}")).json()
        assert public["by_country"] == {"FR": 6, "other": 3}
        listed = (await client.get("/v1/cases")).json()["cases"]
        assert next(c for c in listed if c["id"] == case_id)["by_country"] == {"FR": 6, "other": 3}
        admin = (await client.get(f"/v1/admin/cases/{case_id}", headers=ADMIN)).json()
        assert admin["by_country"] == {"FR": 6, "IR": 2, "MA": 1}
        assert (admin["total"], admin["pending"], admin["small_count_threshold"]) == (9, 1, 5)
        assert (await client.get(f"/v1/admin/cases/{case_id}")).status_code == 401
        assert (await client.get(f"/v1/admin/cases/{new_id()}", headers=ADMIN)).status_code == 404
        async with client.stream("GET", f"/v1/cases/{case_id}/live") as response:
            live = await asyncio.wait_for(anext(_events(response)), 10)
        assert live["by_country"] == {"FR": 6, "other": 3}
        assert (live["total"], live["pending"], live["confirmation"]) == (9, 1, "none")
