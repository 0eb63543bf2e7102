"""The invalidation routes over a running tally (real Kafka and Postgres): through the log, and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from tally.case_store import PostgresCaseStore
from tally.cases import CaseCreate, new_case
from tally.counter_store import PostgresCounterStore
from tally.invalidation_api import InvalidationPorts, invalidation_router
from tally.metrics import TallyMetrics
from tally.reconcile import check_counters, rebuild_counters
from tally.settings import TallySettings

from clameur.admin import AdminDoor
from clameur.events import SupportersInvalidated, decode_case_event, decode_signature_log_event
from clameur.supporters import SupporterKeys
from clameur.topics import Topics
from clameur.web import install_problem_handlers
from tests.conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from tests.support import eventually, metric, read_topic
from tests.tally.helpers import ADMIN, case_body, counters, produce, total
from tests.tally.invalidation_support import batch, bot_wave, expected_counts, nonzero, people, signed

PROBLEM = "application/problem+json"
BOTS = {"email_domains": ["Bot-Farm.example"]}
_KEYS = SupporterKeys.from_master(TEST_SECRET)


async def _counted(infra: Any, case_id: str, expected: int) -> bool:
    return await total(infra.database_url, case_id) == expected


async def test_a_dry_run_then_a_real_run_then_a_restore_through_the_log(
    tally: Any, tally_settings: TallySettings, topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    bots, humans = bot_wave(case_id, 30), people(case_id, 20)
    url = f"/v1/admin/cases/{case_id}/invalidations"
    async with tally(tally_settings) as (_, client):
        assert (
            await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        ).status_code == 201
        await produce(infra.kafka, topics.signatures, [*bots, *humans])
        await eventually(lambda: _counted(infra, case_id, 50), what="50 counted")

        body = {"reason": "bot wave from one domain", "filter": BOTS, "dry_run": True}
        dry = await client.post(url, json=body, headers=ADMIN)
        assert dry.status_code == 200, dry.text
        assert dry.json() == {
            "matched": 30,
            "by_country": {"BE": 10, "FR": 10, "MA": 10},
            "by_action": {"letter": 15, "signature": 15},
        }
        assert await total(infra.database_url, case_id) == 50  # a dry run changes nothing

        real = await client.post(url, json={**body, "dry_run": False}, headers=ADMIN)
        assert real.status_code == 201, real.text
        applied = real.json()
        assert {k: applied[k] for k in ("matched", "by_country", "by_action")} == dry.json()
        assert real.headers["location"] == f"{url}/{applied['id']}"
        assert nonzero(await counters(infra.database_url, case_id)) == expected_counts(humans)

        # It went through the log: the event is on signatures.v2, by the token's name.
        logged = [
            decode_signature_log_event(r.value)
            for r in await read_topic(infra.kafka, topics.signatures, at_least=51)
        ]
        requested = [e for e in logged if e.type == "InvalidationRequested"]
        assert [(str(e.invalidation_id), e.requested_by) for e in requested] == [(applied["id"], "admin")]

        notices = [
            decode_case_event(r.value) for r in await read_topic(infra.kafka, topics.case_events, at_least=1)
        ]
        taken = [n for n in notices if isinstance(n, SupportersInvalidated)]
        assert sorted(k for n in taken for k in n.supporter_keys) == sorted(s.supporter_key for s in bots)

        listed = (await client.get(url, headers=ADMIN)).json()["invalidations"]
        assert [(i["id"], i["reason"], i["by"], i["matched"], i["revoked_at"]) for i in listed] == [
            (applied["id"], "bot wave from one domain", "admin", 30, None)
        ]

        restored = await client.delete(f"{url}/{applied['id']}", headers=ADMIN)
        assert restored.status_code == 200, restored.text
        assert restored.json()["restored"] == dry.json() and restored.json()["revoked_by"] == "admin"
        assert await counters(infra.database_url, case_id) == expected_counts([*bots, *humans])
        again = await client.delete(f"{url}/{applied['id']}", headers=ADMIN)
        assert again.status_code == 200 and again.json() == restored.json()  # idempotent
        assert await counters(infra.database_url, case_id) == expected_counts([*bots, *humans])
        scraped = (await client.get("/metrics")).text
    # Audited: the real run and the revocation once each (not the dry run, not the repeat).
    audited = {
        action: metric(scraped, "clameur_admin_actions_total", service="tally", action=action)
        for action in ("invalidation_created", "invalidation_revoked")
    }
    assert audited == {"invalidation_created": 1, "invalidation_revoked": 1}


async def test_emails_are_matched_by_their_canonical_key_and_kept_nowhere(
    tally: Any, tally_settings: TallySettings, topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    url = f"/v1/admin/cases/{case_id}/invalidations"
    async with tally(tally_settings) as (_, client):
        await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        await produce(infra.kafka, topics.signatures, [signed(case_id, "abc@gmail.com"), *people(case_id, 3)])
        await eventually(lambda: _counted(infra, case_id, 4), what="4 counted")
        body = {"reason": "one person signed 40 names", "filter": {"emails": ["A.B.C+nawal@googlemail.com"]}}
        real = await client.post(url, json=body, headers=ADMIN)
        assert real.status_code == 201 and real.json()["matched"] == 1, real.text
        assert "googlemail" not in real.text and "gmail" not in str(real.json()["filter"])
        assert await total(infra.database_url, case_id) == 3


async def test_the_routes_refuse_without_the_token_an_empty_filter_an_unknown_case_and_bad_fields(
    tally: Any, tally_settings: TallySettings, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    url = f"/v1/admin/cases/{case_id}/invalidations"
    body = {"reason": "bots", "filter": BOTS}
    async with tally(tally_settings) as (_, client):
        await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        for headers in ({}, {"Authorization": "Bearer nope"}):
            for refused in (
                await client.post(url, json=body, headers=headers),
                await client.get(url, headers=headers),
                await client.delete(f"{url}/7f1c2a55-0d6e-4a57-9a53-6f4f0c3b9d11", headers=headers),
            ):
                assert refused.status_code == 401 and refused.headers["content-type"] == PROBLEM

        empty = await client.post(url, json={"reason": "all", "filter": {}}, headers=ADMIN)
        assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "filter", empty.text
        unknown_case = await client.post(
            f"/v1/admin/cases/{new_id()}/invalidations", json=body, headers=ADMIN
        )
        assert unknown_case.status_code == 404 and unknown_case.headers["content-type"] == PROBLEM
        wrong_type = await client.post(
            url, json={"reason": "bots", "filter": {"email_domains": "bot-farm.example"}}, headers=ADMIN
        )
        assert wrong_type.status_code == 422
        assert [e["field"] for e in wrong_type.json()["errors"]] == ["filter.email_domains"]
        typo = await client.post(
            url, json={"reason": "bots", "filter": {"email_domain": ["x"]}}, headers=ADMIN
        )
        assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "filter.email_domain"
        bad_date = await client.post(
            url, json={"reason": "bots", "filter": {"received_from": "yesterday"}}, headers=ADMIN
        )
        assert bad_date.status_code == 422 and bad_date.json()["errors"][0]["field"] == "filter.received_from"
        bad_email = await client.post(
            url, json={"reason": "x", "filter": {"emails": ["not-an-address"]}}, headers=ADMIN
        )
        assert bad_email.status_code == 422 and bad_email.json()["errors"][0]["field"] == "filter.emails"
        backwards = {"received_from": "2026-11-30T10:00:00Z", "received_until": "2026-11-30T09:00:00+00:00"}
        window = await client.post(url, json={"reason": "x", "filter": backwards}, headers=ADMIN)
        assert window.status_code == 422 and window.json()["errors"][0]["field"] == "filter", window.text
        naive = await client.post(
            url, json={"reason": "x", "filter": {"received_from": "2026-11-30T10:00"}}, headers=ADMIN
        )
        assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "filter.received_from"
        unknown = await client.delete(f"{url}/7f1c2a55-0d6e-4a57-9a53-6f4f0c3b9d11", headers=ADMIN)
        assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM
        listed = await client.get(url, headers=ADMIN)
        assert listed.status_code == 200 and listed.json() == {"invalidations": []}  # nothing half-applied


async def test_a_request_not_applied_in_time_is_a_202_whose_location_shows_it_once_applied(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    """No consumer runs here: the request waits in the outbox, as behind a long backlog."""
    case_id = new_id("nawal")
    app = FastAPI()
    install_problem_handlers(app)
    ports = InvalidationPorts(pool, topics.signatures, lambda: None)
    app.include_router(
        invalidation_router(
            lambda: ports, AdminDoor(CollectorRegistry(), "tally", TEST_ADMIN_TOKEN, ()), _KEYS, wait_s=0.3
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tally") as client:
        request = CaseCreate.model_validate(case_body(case_id))
        await PostgresCaseStore(pool, topics).create(new_case(request, datetime.now(UTC)))
        store = PostgresCounterStore(pool, TallyMetrics(CollectorRegistry()), topics.case_events)
        await store.apply(batch(topics.signatures, bot_wave(case_id, 9)))
        body = {"reason": "bots", "filter": BOTS}
        pending = await client.post(f"/v1/admin/cases/{case_id}/invalidations", json=body, headers=ADMIN)
        assert pending.status_code == 202, pending.text
        location = pending.headers["location"]
        assert location.endswith(pending.json()["id"])
        assert (await client.get(location, headers=ADMIN)).status_code == 404  # not applied yet
        assert await total(infra.database_url, case_id) == 9  # the route changed no count itself

        staged = await pool.fetchval(
            "SELECT payload FROM tally.outbox WHERE topic = $1 "
            "AND payload->>'type' = 'InvalidationRequested' AND payload->>'case_id' = $2",
            topics.signatures,
            case_id,
        )
        event = decode_signature_log_event(orjson.dumps(staged))
        await store.apply(batch(topics.signatures, [event], first_offset=9))  # tally reaches it in the log
        shown = await client.get(location, headers=ADMIN)
        assert shown.status_code == 200 and shown.json()["matched"] == 9
        assert await total(infra.database_url, case_id) == 0


async def test_a_rebuild_from_the_log_agrees_after_invalidations_and_a_restore(
    tally: Any,
    tally_settings: TallySettings,
    topics: Topics,
    new_id: Any,
    infra: Any,
    pool: asyncpg.Pool[Any],
) -> None:
    case_id = new_id("nawal")
    url = f"/v1/admin/cases/{case_id}/invalidations"
    async with tally(tally_settings) as (_, client):
        await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        await produce(infra.kafka, topics.signatures, [*bot_wave(case_id, 20), *people(case_id, 10)])
        await eventually(lambda: _counted(infra, case_id, 30), what="30 counted")
        bots = await client.post(url, json={"reason": "bots", "filter": BOTS}, headers=ADMIN)
        french = await client.post(url, json={"reason": "FR", "filter": {"countries": ["FR"]}}, headers=ADMIN)
        assert (bots.status_code, french.status_code) == (201, 201)
        assert (await client.delete(f"{url}/{bots.json()['id']}", headers=ADMIN)).status_code == 200
        await produce(infra.kafka, topics.signatures, bot_wave(case_id, 25)[20:])  # after them in the log
        await eventually(lambda: _counted(infra, case_id, 35 - 12), what="the late bots counted")
    rebuilt = await rebuild_counters(pool, infra.kafka, topics.signatures, cases=[case_id])
    assert rebuilt.records == 38 and rebuilt.poisoned == 0  # 35 signatures, 3 invalidation events
    assert rebuilt.drifts == []
    assert await check_counters(pool, cases=[case_id]) == []
