"""Kafka producers, the dead-letter queue and a topic's partitions, as docs/architecture.md promises."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord
from pydantic import SecretStr

from clameur.logs import error_locations


class UnknownTopic(LookupError):
    """The cluster does not know the topic: it was never provisioned."""


SecurityProtocol = Literal["PLAINTEXT", "SASL_SSL"]


@dataclass(frozen=True)
class KafkaAccess:
    """Where the brokers are and how a client proves who it is to them.

    ``PLAINTEXT`` is a local broker on loopback; ``SASL_SSL`` encrypts the link (the
    broker's certificate checked against ``ca_file``) and logs in as ``username`` with
    SCRAM, so the broker's ACLs apply to that user (docs/operations.md, "Kafka users and ACLs").
    """

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None


Kafka = str | KafkaAccess
"""A plaintext broker's bootstrap address, or how to reach a secured cluster."""


def client_kwargs(kafka: Kafka) -> dict[str, Any]:
    """The connection arguments of every aiokafka producer, consumer and admin client.

    The one place a client learns the cluster's address, TLS and SASL settings: a client
    built without it would talk plaintext to a cluster that refuses it.
    """
    if isinstance(kafka, str):
        return {"bootstrap_servers": kafka}
    if kafka.security_protocol == "PLAINTEXT":
        return {"bootstrap_servers": kafka.bootstrap}
    if kafka.username is None or kafka.password is None:
        raise ValueError(
            "CLAMEUR_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs this service's CLAMEUR_KAFKA_USERNAME "
            "and CLAMEUR_KAFKA_PASSWORD (docs/operations.md, 'Kafka users and ACLs')"
        )
    return {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": kafka.security_protocol,
        # None: the system's trust store (a cluster with a publicly signed certificate).
        "ssl_context": create_ssl_context(cafile=str(kafka.ca_file) if kafka.ca_file else None),
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_plain_username": kafka.username,
        "sasl_plain_password": kafka.password.get_secret_value(),
    }


def create_producer(
    bootstrap: Kafka,
    *,
    linger_ms: int = 5,
    request_timeout_ms: int = 30_000,
    client_id: str = "clameur",
) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (``acks=all``).

    A small linger lets concurrent sends share one request: durability without a
    round trip per record.  Start it with ``await producer.start()``.
    """
    return AIOKafkaProducer(
        **client_kwargs(bootstrap),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
        max_batch_size=256 * 1024,
    )


def dlq_headers(record: ConsumerRecord[bytes, bytes], error: BaseException) -> list[tuple[str, bytes]]:
    """Headers that say where a set-aside record came from and why it was refused.

    Why is the error's type and, for a validation error, its locations
    (``"email:value_error"``): never its text, which can quote a name or an address
    from the record.  The DLQ is read by operators and kept for the erasure bound; the
    headers must not become a second copy of what the record holds.
    """
    return [
        ("clameur.error.type", type(error).__name__.encode()),
        ("clameur.error.locations", ", ".join(error_locations(error)).encode()),
        ("clameur.source.topic", record.topic.encode()),
        ("clameur.source.partition", str(record.partition).encode()),
        ("clameur.source.offset", str(record.offset).encode()),
    ]


async def send_to_dlq(
    producer: AIOKafkaProducer, record: ConsumerRecord[bytes, bytes], error: BaseException
) -> None:
    """Publish the raw record to ``<topic>.dlq`` with the error in headers; wait for the ack."""
    await producer.send_and_wait(
        f"{record.topic}.dlq",
        value=record.value,
        key=record.key,
        headers=dlq_headers(record, error),
    )


@asynccontextmanager
async def kafka_admin(bootstrap: Kafka, *, client_id: str = "clameur") -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, started for the block and closed when it ends, whatever happens in it."""
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap), client_id=client_id)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def partitions_of(bootstrap: Kafka, topic: str, *, client_id: str = "clameur") -> list[int]:
    """The partition numbers of ``topic``, sorted, as the cluster's metadata says now.

    The one way we list a topic's partitions: asked with the admin client's public
    ``describe_topics``, so it needs no consumer or producer, and no private attribute of
    one.  Raises :class:`UnknownTopic` (with what to do) when the topic does not exist,
    and aiokafka's ``KafkaError`` when the cluster cannot be reached.
    """
    async with kafka_admin(bootstrap, client_id=client_id) as admin:
        described = await admin.describe_topics([topic])
    partitions = sorted(
        int(partition["partition"])
        for description in described
        if description.get("topic") == topic
        for partition in description.get("partitions", ())
    )
    if not partitions:
        raise UnknownTopic(
            f"topic {topic} does not exist; run `make up` or `python -m clameur.provision topics`"
        )
    return partitions
