"""The harness itself: the broker and database the tests get are real and isolated."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer

from clameur.events import SignatureAccepted
from clameur.kafka import create_producer
from clameur.topics import Topics
from tests.conftest import Infra


async def test_a_record_goes_through_the_real_broker(infra: Infra, topics: Topics) -> None:
    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        event = SignatureAccepted(
            case_id="harness", country="MA", locale="fr", supporter_key="k", email_domain="example.org"
        )
        await producer.send_and_wait(topics.signatures, event.to_json(), key=b"harness")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topics.signatures, bootstrap_servers=infra.kafka, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.key == b"harness"
    assert SignatureAccepted.model_validate_json(record.value).event_id == event.event_id


async def test_the_session_database_has_both_schemas_migrated(infra: Infra) -> None:
    connection = await asyncpg.connect(infra.database_url)
    try:
        schemas = {row["nspname"] for row in await connection.fetch("SELECT nspname FROM pg_namespace")}
        versions = {
            schema: await connection.fetchval(f"SELECT count(*) FROM {schema}.alembic_version")
            for schema in ("tally", "notify")
        }
    finally:
        await connection.close()
    assert {"tally", "notify"} <= schemas
    assert versions == {"tally": 1, "notify": 1}
    assert infra.database_url.rsplit("/", 1)[1].startswith("clameur_test_")
