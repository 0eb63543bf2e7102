"""What intake publishes, read back as raw bytes: minimal signatures, contacts only when needed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from clameur.events import decode_contact, decode_signature
from clameur.kafka import kafka_admin, partitions_of
from clameur.supporters import SupporterKeys
from clameur.topics import Topics, contact_partition
from tests.conftest import TEST_SECRET, Infra
from tests.intake.conftest import SIGNER, Intake, case_state, publish_cases
from tests.support import eventually, metric, read_topic

ATENA = {
    "first_name": "Atenafirst",
    "last_name": "Daemilast",
    "email": "  Atena.Typed+News@Example.ORG ",
    "country": "IR",
    "postal_code": "ZP-9137",
    "locale": "en",
    "source": {
        "widget": "home",
        "page_url": "https://free-atena.example/sign?email=atena%40example.org&name=Atenafirst#Daemilast",
        "referrer": "https://referrer-of-atena.example/search?q=Daemilast",
    },
}
TYPED = (b"Atenafirst", b"Daemilast", b"Atena.Typed", b"atena.typed", b"ZP-9137", b"referrer-of-atena")


async def _case(infra: Infra, topics: Topics, case_id: str, **changes: Any) -> str:
    await publish_cases(infra.kafka, topics, case_state(case_id, **changes))
    return case_id


async def test_the_signature_holds_no_personal_data_and_the_contact_no_more_than_needed(
    intake: Intake, infra: Infra, topics: Topics, new_id: Callable[[str], str]
) -> None:
    case_id = await _case(infra, topics, new_id("atena"), confirmation="email")
    async with intake() as (_, client):
        answer = await client.post(
            f"/v1/cases/{case_id}/signatures", json={**ATENA, "consent": {"updates": True}}
        )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending_confirmation"

    [signature_record] = await read_topic(infra.kafka, topics.signatures, at_least=1)
    # The raw bytes kept forever: none of what the supporter typed about themselves.
    for typed in TYPED:
        assert typed not in signature_record.value, typed
    for field in (b"first_name", b"last_name", b'"email"', b"postal_code", b"referrer"):
        assert field not in signature_record.value
    signature = decode_signature(signature_record.value)
    assert signature.schema_version == 2
    assert signature.email_domain == "example.org"
    assert signature.awaits_confirmation is True
    assert signature.source.page_url == "https://free-atena.example/sign"
    assert signature.supporter_key == SupporterKeys.from_master(TEST_SECRET).of_address(
        "atena.typed+news@example.org"
    )

    [contact_record] = await read_topic(infra.kafka, topics.contacts, at_least=1)
    assert contact_record.key == signature.supporter_key.encode()
    # Where notify's tombstone goes too: compaction supersedes only within a partition.
    partitions = sorted(await partitions_of(infra.kafka, topics.contacts))
    assert contact_record.partition == contact_partition(contact_record.key, partitions)
    for typed in (b"Daemilast", b"ZP-9137", b"referrer-of-atena", b"free-atena"):
        assert typed not in contact_record.value, typed
    contact = decode_contact(contact_record.value)
    assert (contact.email, contact.first_name, contact.locale) == (
        "Atena.Typed+News@Example.ORG",
        "Atenafirst",
        "en",
    )
    assert contact.supporter_key == signature.supporter_key


@pytest.mark.parametrize(
    ("confirmation", "updates", "status", "contact"),
    [
        ("none", False, "accepted", False),
        ("none", True, "accepted", True),
        ("email", False, "pending_confirmation", True),
        ("email", True, "pending_confirmation", True),
    ],
)
async def test_the_status_and_the_contact_follow_the_case_policy_and_the_consent(
    intake: Intake,
    infra: Infra,
    topics: Topics,
    new_id: Callable[[str], str],
    confirmation: str,
    updates: bool,
    status: str,
    contact: bool,
) -> None:
    case_id = await _case(infra, topics, new_id("nawal"), confirmation=confirmation)
    async with intake() as (_, client):
        answer = await client.post(
            f"/v1/cases/{case_id}/signatures", json={**SIGNER, "consent": {"updates": updates}}
        )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == status
    [signature] = [
        decode_signature(r.value) for r in await read_topic(infra.kafka, topics.signatures, at_least=1)
    ]
    assert signature.awaits_confirmation is (confirmation == "email")
    assert str(signature.signature_id) == answer.json()["signature_id"]
    # at_least=0 reads a moment and returns what is there: nothing, when no contact is needed.
    contacts = await read_topic(infra.kafka, topics.contacts, at_least=1 if contact else 0)
    assert len(contacts) == (1 if contact else 0)


async def test_gmail_aliases_give_one_supporter_key(
    intake: Intake, infra: Infra, topics: Topics, new_id: Callable[[str], str]
) -> None:
    case_id = await _case(infra, topics, new_id("nawal"))
    aliases = ("a.b.c@gmail.com", "abc+1@gmail.com", "abc@googlemail.com")
    async with intake() as (_, client):
        for email in aliases:
            answer = await client.post(f"/v1/cases/{case_id}/signatures", json={**SIGNER, "email": email})
            assert answer.status_code == 202, answer.text
    records = await read_topic(infra.kafka, topics.signatures, at_least=3)
    events = [decode_signature(record.value) for record in records]
    assert len(events) == 3
    assert len({event.supporter_key for event in events}) == 1
    assert {event.email_domain for event in events} == {"gmail.com"}


async def test_a_retried_idempotency_key_gets_the_first_status_after_the_policy_changed(
    intake: Intake, infra: Infra, topics: Topics, new_id: Callable[[str], str]
) -> None:
    case_id = await _case(infra, topics, new_id("nawal"), confirmation="email")
    url = f"/v1/cases/{case_id}/signatures"
    retry = {"Idempotency-Key": "retry-1"}
    async with intake() as (_, client):
        first = await client.post(url, json=SIGNER, headers=retry)
        assert first.json()["status"] == "pending_confirmation"
        await publish_cases(infra.kafka, topics, case_state(case_id, version=2, confirmation="none"))

        async def policy_changed() -> bool:
            status: str = (await client.post(url, json=SIGNER)).json()["status"]
            return status == "accepted"

        # The fault: intake now knows the case counts at once (a fresh request says so).
        await eventually(policy_changed, within=15, what="intake read the new policy")
        again = await client.post(url, json=SIGNER, headers=retry)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def _refuse_records_on(bootstrap: str, topic: str) -> None:
    """The broker refuses every record on ``topic`` from now on (each is over its size limit)."""
    async with kafka_admin(bootstrap) as admin:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "64"})]
        )


@pytest.mark.parametrize("refusing", ["signatures", "contacts"])
async def test_a_broker_failure_on_either_record_gives_503_and_no_202(
    intake: Intake, infra: Infra, topics: Topics, new_id: Callable[[str], str], refusing: str
) -> None:
    case_id = await _case(infra, topics, new_id("nawal"), confirmation="email")
    refused_topic, other_topic = (
        (topics.signatures, topics.contacts)
        if refusing == "signatures"
        else (topics.contacts, topics.signatures)
    )
    await _refuse_records_on(infra.kafka, refused_topic)
    await asyncio.sleep(1.0)  # the topic's config reaches its partition leaders
    async with intake(broker_ack_timeout=3.0) as (_, client):
        answer = await client.post(f"/v1/cases/{case_id}/signatures", json=SIGNER)
        metrics = (await client.get("/metrics")).text
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.headers["content-type"] == "application/problem+json"
    # The fault happened where it was meant to: the refused topic holds nothing, the other
    # record was written (and is harmless alone: a retry is counted once).
    assert await read_topic(infra.kafka, refused_topic) == []
    assert len(await read_topic(infra.kafka, other_topic, at_least=1)) == 1
    assert metric(metrics, "clameur_intake_produce_errors_total") == 2
    assert metric(metrics, "clameur_intake_rejections_total", reason="broker") == 1
