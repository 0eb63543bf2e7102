"""Publishing in shared batches: the bytes, the partition and the order are the producer's own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from intake.publisher import PartitionLanes

from clameur.events import (
    CaseClosed,
    Consent,
    Contact,
    Event,
    MilestoneReached,
    SignatureAccepted,
    SignatureSource,
    Victory,
    VictoryDeclared,
    decode_contact,
    decode_event,
    decode_signature,
    decode_signature_log_event,
)
from clameur.kafka import create_producer
from clameur.topics import Topics, contact_partition
from tests.conftest import Infra
from tests.intake.conftest import case_state
from tests.support import read_topic


def _signature(case_id: str, **changes: Any) -> SignatureAccepted:
    fields: dict[str, Any] = {
        "case_id": case_id,
        "country": "FR",
        "locale": "fr",
        "supporter_key": "ab" * 32,
        "email_domain": "exämple.org",
        "consent": Consent(updates=True),
        "awaits_confirmation": True,
        "source": SignatureSource(widget='w\u2028x "😀"', page_url="https://free-nawal.example/é"),
    }
    fields.update(changes)
    return SignatureAccepted(**fields)


EVENTS: list[Event] = [
    _signature("nawal"),
    _signature("nawal", consent=Consent(), awaits_confirmation=False, source=SignatureSource(partner="ONG")),
    case_state(
        "nawal",
        victory=Victory(headline={"fr": "Libre !"}, message={"fr": "Merci."}, declared_at=datetime.now(UTC)),
    ),
    MilestoneReached(case_id="nawal", threshold=10, total=11, case_title={"fr": "N"}, default_locale="fr"),
    VictoryDeclared(
        case_id="nawal",
        headline={"fr": "Libre"},
        message={"en": "Free"},
        total=3,
        case_title={"fr": "N"},
        default_locale="fr",
    ),
    CaseClosed(case_id="nawal"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_to_json_is_byte_for_byte_what_it_was_and_decodes(event: Event) -> None:
    # Before: orjson over model_dump(mode="json"); consumers' decoders must not see a difference.
    assert event.to_json() == orjson.dumps(event.model_dump(mode="json", by_alias=True))
    assert decode_event(event.to_json()) == event


def test_a_signature_event_round_trips_through_the_consumers_decoder() -> None:
    event = _signature("nawal")
    assert decode_signature(event.to_json()) == event
    assert decode_signature_log_event(event.to_json()) == event


def test_a_contact_is_byte_for_byte_its_json_and_round_trips() -> None:
    contact = Contact(
        supporter_key="cd" * 32, email="Léa.O'Brien@Exämple.org", first_name='Léa "😀"', locale="fr"
    )
    assert contact.to_json() == orjson.dumps(contact.model_dump(mode="json"))
    assert decode_contact(contact.to_json()) == contact


class _Cluster:
    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.partitions)


class _Client:
    def __init__(self, cluster: _Cluster) -> None:
        self.cluster = cluster


class _MetadataOnly:
    """Just enough of a producer for the partitioner: the cluster's partitions."""

    def __init__(self, partitions: set[int]) -> None:
        self.client = _Client(_Cluster(partitions))


def _partitioner(lanes: PartitionLanes) -> Callable[[bytes], int]:
    partition_of = lanes.partitioner()
    assert partition_of is not None
    return partition_of


_KEYS = [f"case-{n}".encode() for n in range(200)] + [b"nawal-benaissa", b"a", b"ab" * 32]


def test_partitions_are_the_default_partitioners_even_when_partitions_are_added() -> None:
    producer = _MetadataOnly(set(range(6)))
    remembering = PartitionLanes(producer, "signatures.v2", 2.0)
    for count in (6, 6, 12, 1):
        producer.client.cluster.partitions = set(range(count))
        expected = DefaultPartitioner()
        partition_of = _partitioner(remembering)
        for key in _KEYS:
            assert partition_of(key) == expected(key, list(range(count)), list(range(count)))


def test_placed_lanes_follow_the_topics_own_rule_even_when_partitions_are_added() -> None:
    producer = _MetadataOnly(set(range(6)))
    # contacts.v1: the partition notify's tombstone goes to as well.
    placed = PartitionLanes(producer, "contacts.v1", 2.0, placement=contact_partition)
    spread = set()
    for count in (6, 6, 12, 1):
        producer.client.cluster.partitions = set(range(count))
        partition_of = _partitioner(placed)
        for key in _KEYS:
            assert partition_of(key) == contact_partition(key, list(range(count)))
            spread.add(partition_of(key))
    assert spread == set(range(12)), "every partition gets keys"


async def test_concurrent_signatures_share_batches_keep_their_partition_and_order(
    infra: Any, topics: Topics, new_id: Callable[[str], str]
) -> None:
    kafka_bootstrap = infra.kafka
    producer: AIOKafkaProducer = create_producer(kafka_bootstrap, client_id="test-lanes")
    await producer.start()
    try:
        lanes = PartitionLanes(producer, topics.signatures, 5.0)
        await producer.partitions_for(topics.signatures)
        partition_of = _partitioner(lanes)
        cases = [new_id("case") for _ in range(4)]
        events = [_signature(cases[n % len(cases)], supporter_key=f"{n:064x}") for n in range(400)]
        acks = [
            lanes.add(partition_of(event.case_id.encode()), event.case_id.encode(), event.to_json())
            for event in events
        ]
        await asyncio.wait_for(asyncio.gather(*(asyncio.shield(ack) for ack in acks)), 10)
        assert len(set(acks)) < len(events) / 10, "records were not sent in shared batches"
    finally:
        await producer.stop()

    records = await read_topic(kafka_bootstrap, topics.signatures, at_least=len(events), within=15)
    assert len(records) == len(events)
    expected = DefaultPartitioner()
    by_case: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda record: (record.partition, record.offset)):
        event = decode_signature(record.value)
        assert record.key == event.case_id.encode()
        assert record.partition == expected(record.key, [0, 1, 2], [0, 1, 2])
        by_case.setdefault(event.case_id, []).append(event.supporter_key)
    for case_id in cases:
        sent = [event.supporter_key for event in events if event.case_id == case_id]
        assert by_case[case_id] == sent


async def test_our_partition_is_the_one_the_producer_chooses(infra: Infra, topics: Topics) -> None:
    producer: AIOKafkaProducer = create_producer(infra.kafka, client_id="test-partitions")
    await producer.start()
    try:
        lanes = PartitionLanes(producer, topics.signatures, 5.0)
        partition_of = await lanes.fetch_partitioner()
        assert len(await producer.partitions_for(topics.signatures)) > 1
        keys = [f"case-{n}".encode() for n in range(60)] + [b"nawal-benaissa", b"a", b""]
        # send() lets the producer's own partitioner choose; its answer says where it went.
        sent = [await producer.send(topics.signatures, value=b"{}", key=key) for key in keys]
        chosen = [metadata.partition for metadata in await asyncio.gather(*sent)]
    finally:
        await producer.stop()
    assert [partition_of(key) for key in keys] == chosen
    assert len(set(chosen)) > 1
