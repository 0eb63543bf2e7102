"""Partners' bulk import: a partner key, a result per item, 202 once every accepted is acked."""

from __future__ import annotations

from collections.abc import Callable

from clameur.events import decode_contact, decode_signature
from clameur.topics import Topics
from tests.conftest import Infra
from tests.intake.conftest import SIGNER, Intake, case_state, publish_cases, won_state
from tests.support import metric, read_topic

PARTNER = {"Authorization": "Bearer partner-key-amnesty-paper-0123456789"}


def partners() -> dict[str, str]:
    return {"partner-key-amnesty-paper-0123456789": "amnesty-paper"}


async def test_a_batch_answers_per_item_and_publishes_the_accepted(
    intake: Intake, infra: Infra, topics: Topics, nawal: str
) -> None:
    items: list[object] = [
        {**SIGNER, "email": f"paper{n}@example.org", "consent": {"updates": n % 2 == 0}} for n in range(300)
    ]
    items[7] = {**SIGNER, "country": "XX"}
    items[42] = {**SIGNER, "first_name": "Evil\r\nHeader"}
    items[99] = "not a signature"
    async with intake(partner_keys=partners()) as (_, client):
        answer = await client.post(
            f"/v1/cases/{nawal}/signatures/batch", json={"signatures": items}, headers=PARTNER
        )
        assert answer.status_code == 202, answer.text
        metrics = (await client.get("/metrics")).text
    receipt = answer.json()
    assert (receipt["accepted"], receipt["rejected"]) == (297, 3)
    results = receipt["results"]
    assert [result["index"] for result in results] == list(range(300))
    assert results[7]["status"] == "rejected"
    assert results[7]["errors"][0]["field"] == "country"
    assert results[42]["errors"][0]["field"] == "first_name"
    assert results[99]["status"] == "rejected"
    assert results[0]["status"] == "accepted"

    records = await read_topic(infra.kafka, topics.signatures, at_least=297, within=20)
    assert len(records) == 297
    events = [decode_signature(record.value) for record in records]
    assert {record.key for record in records} == {nawal.encode()}
    assert {event.source.partner for event in events} == {"amnesty-paper"}
    assert {str(event.signature_id) for event in events} == {
        result["signature_id"] for result in results if result["status"] == "accepted"
    }
    consented = {n for n in range(300) if n % 2 == 0 and n not in (42,)}
    assert sum(event.consent.updates for event in events) == len(consented)
    assert not any(event.awaits_confirmation for event in events)
    # A "none" case: a contact only for those who asked for news, keyed by supporter.
    contacts = [
        decode_contact(record.value)
        for record in await read_topic(infra.kafka, topics.contacts, at_least=len(consented), within=20)
    ]
    assert sorted(contact.email for contact in contacts) == sorted(f"paper{n}@example.org" for n in consented)
    supporters = {event.supporter_key for event in events if event.consent.updates}
    assert {contact.supporter_key for contact in contacts} == supporters
    assert metric(metrics, "clameur_intake_signatures_accepted_total", action="signature") == 297
    assert metric(metrics, "clameur_intake_rejections_total", reason="validation") == 3


async def test_a_batch_needs_a_partner_key_and_an_open_case(
    intake: Intake, infra: Infra, topics: Topics, nawal: str, new_id: Callable[[str], str]
) -> None:
    won = new_id("won")
    await publish_cases(infra.kafka, topics, case_state(won), won_state(won))
    body = {"signatures": [SIGNER]}
    async with intake(partner_keys=partners(), batch_max_items=5) as (_, client):
        url = f"/v1/cases/{nawal}/signatures/batch"
        anonymous = await client.post(url, json=body)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = await client.post(url, json=body, headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        assert (
            await client.post(f"/v1/cases/{won}/signatures/batch", json=body, headers=PARTNER)
        ).status_code == 410
        assert (
            await client.post("/v1/cases/nobody/signatures/batch", json=body, headers=PARTNER)
        ).status_code == 404
        too_many = await client.post(url, json={"signatures": [SIGNER] * 6}, headers=PARTNER)
        assert too_many.status_code == 422
        empty = await client.post(url, json={"signatures": []}, headers=PARTNER)
        assert empty.status_code == 422
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "clameur_intake_rejections_total", reason="partner_key") == 2
    assert await read_topic(infra.kafka, topics.signatures) == []


async def test_a_batch_on_a_confirmation_case_is_pending_per_item_with_a_contact_each(
    intake: Intake, infra: Infra, topics: Topics, atena: str
) -> None:
    items: list[object] = [
        {**SIGNER, "email": f"Paper{n}@Example.org", "postal_code": "75011"} for n in range(5)
    ]
    items.append({**SIGNER, "country": "XX"})
    async with intake(partner_keys=partners()) as (_, client):
        answer = await client.post(
            f"/v1/cases/{atena}/signatures/batch", json={"signatures": items}, headers=PARTNER
        )
    assert answer.status_code == 202, answer.text
    assert [result["status"] for result in answer.json()["results"]] == ["pending_confirmation"] * 5 + [
        "rejected"
    ]
    events = [
        decode_signature(record.value)
        for record in await read_topic(infra.kafka, topics.signatures, at_least=5)
    ]
    assert len(events) == 5 and all(event.awaits_confirmation for event in events)
    contacts = await read_topic(infra.kafka, topics.contacts, at_least=5)
    assert sorted(decode_contact(record.value).email for record in contacts) == [
        f"Paper{n}@Example.org" for n in range(5)
    ]
    assert all(b"75011" not in record.value and b"Durand" not in record.value for record in contacts)
