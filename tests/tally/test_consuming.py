"""From signatures.v2 to the counters and from the outbox to Kafka, with the app running."""

from __future__ import annotations

from typing import Any

import orjson
from tally.settings import TallySettings

from clameur.events import Action, decode_case_event, decode_case_state
from clameur.topics import Topics
from tests.support import eventually, metric, read_topic
from tests.tally.helpers import ADMIN, case_body, counters, many, produce, signature, total


async def test_duplicates_count_once(
    tally: Any, tally_settings: TallySettings, topics: Topics, infra: Any, new_id: Any
) -> None:
    case_id = new_id("nawal")
    distinct = many(case_id, 40)
    spellings = [
        signature(case_id, " Supporter1@Example.org "),  # supporter1 is in `distinct` already
        signature(case_id, "SUPPORTER2@EXAMPLE.ORG", country="MA"),
        signature(case_id, "supporter3@example.org", action=Action.LETTER),  # another action: counts
    ]
    async with tally(tally_settings) as (_, client):
        await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        await produce(infra.kafka, topics.signatures, distinct + spellings + distinct[:10])
        await eventually(lambda: _total_is(infra, case_id, 41), within=20, what="41 counted")
        await produce(infra.kafka, topics.signatures, distinct)  # the same records, replayed
        await eventually(lambda: _all_read(client, 40 + 3 + 10 + 40), within=20, what="every record read")
        document = (await client.get(f"/v1/cases/{case_id}")).json()
        metrics = (await client.get("/metrics")).text
    assert document["total"] == 41
    assert document["by_action"] == {"letter": 1, "signature": 40}
    assert sum(document["by_country"].values()) == 41
    assert await counters(infra.database_url, case_id) == {
        ("total", ""): 41,
        ("action", "letter"): 1,
        ("action", "signature"): 40,
        **{("country", c): n for c, n in document["by_country"].items()},
    }
    assert metric(metrics, "clameur_tally_duplicates_total") >= 52


async def test_poison_goes_to_the_dlq_and_later_records_still_count(
    tally: Any, tally_settings: TallySettings, topics: Topics, infra: Any, new_id: Any
) -> None:
    case_id = new_id("nawal")
    broken = signature(case_id, "x@example.org").to_json().replace(b'"FR"', b'"France"')
    async with tally(tally_settings) as (_, client):
        await produce(infra.kafka, topics.signatures, [*many(case_id, 3)], key=case_id)
        await produce(infra.kafka, topics.signatures, [b"\xff not json", broken], key=case_id)
        await produce(infra.kafka, topics.signatures, many(case_id, 6), key=case_id)
        await eventually(lambda: _total_is(infra, case_id, 6), within=20, what="6 counted")
        dead = await read_topic(infra.kafka, topics.dlq(topics.signatures), at_least=2)
        metrics = (await client.get("/metrics")).text
    assert sorted(record.value for record in dead) == sorted([b"\xff not json", broken])
    for record in dead:
        headers = dict(record.headers)
        assert headers["clameur.source.topic"] == topics.signatures.encode()
        assert headers["clameur.error.type"]
        assert record.key == case_id.encode()
    assert f'clameur_dlq_records_total{{service="tally",topic="{topics.signatures}"}} 2.0' in metrics


async def test_case_changes_and_milestones_are_published_once(
    tally: Any, tally_settings: TallySettings, topics: Topics, infra: Any, new_id: Any
) -> None:
    case_id = new_id("nawal")
    async with tally(tally_settings) as (_, client):
        created = await client.post(
            "/v1/admin/cases", json=case_body(case_id, milestones=[5, 10, 1000]), headers=ADMIN
        )
        assert created.status_code == 201
        await produce(infra.kafka, topics.signatures, many(case_id, 12))
        await eventually(lambda: _total_is(infra, case_id, 12), within=20, what="12 counted")
        victory = {"headline": {"fr": "Nawal est libre !"}, "message": {"fr": "Merci à toutes et tous."}}
        assert (
            await client.post(f"/v1/admin/cases/{case_id}/victory", json=victory, headers=ADMIN)
        ).status_code == 200
        events = await read_topic(infra.kafka, topics.case_events, at_least=3)
        states = await read_topic(infra.kafka, topics.cases, at_least=2)
        metrics = (await client.get("/metrics")).text
    announced = [decode_case_event(record.value) for record in events]
    assert [(e.type, getattr(e, "threshold", None)) for e in announced] == [
        ("MilestoneReached", 5),
        ("MilestoneReached", 10),
        ("VictoryDeclared", None),
    ] or sorted((e.type, getattr(e, "threshold", 0) or 0) for e in announced) == [
        ("MilestoneReached", 5),
        ("MilestoneReached", 10),
        ("VictoryDeclared", 0),
    ]
    assert all(record.key == case_id.encode() for record in events + states)
    assert len({e.event_id for e in announced}) == 3
    latest = decode_case_state(states[-1].value)
    assert [decode_case_state(r.value).version for r in states] == [1, 2]
    assert latest.status == "won" and latest.victory is not None
    assert latest.victory.headline == {"fr": "Nawal est libre !"}
    assert orjson.loads(states[0].value)["status"] == "open"
    assert "clameur_tally_milestones_emitted_total 2.0" in metrics
    assert 'clameur_outbox_pending_events{service="tally"} 0.0' in metrics


async def _total_is(infra: Any, case_id: str, expected: int) -> bool:
    return await total(infra.database_url, case_id) == expected


async def _all_read(client: Any, expected: int) -> bool:
    # At least: a rebalance at start may hand a few records over twice (they count once).
    return metric((await client.get("/metrics")).text, "clameur_tally_records_consumed_total") >= expected
