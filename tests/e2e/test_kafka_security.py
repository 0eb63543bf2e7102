"""End to end over Kafka with TLS, SCRAM users and ACLs: the ``secure`` profile's broker.

The three services run as processes, each logged in as its own Kafka user over
SASL_SSL; a signature is counted and its supporter mailed.  Then intake's user is
refused, as an authorization error, what only tally or notify may do, and a wrong
password is refused at authentication (docs/operations.md, "Kafka users and ACLs").
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from clameur.acls import create_acls, delete_acls, service_grants
from clameur.kafka import KafkaAccess, client_kwargs, create_producer
from clameur.topics import Topics, ensure_topics
from devstack.kafka_security import BrokerSecurity
from devstack.mailsink import SmtpSink
from devstack.stack import kafka_login_env
from tests.conftest import TEST_ERASURE_BOUND_S, Infra, env_for
from tests.e2e.stack import (
    Supporter,
    confirm_by_email,
    counts_become,
    create_case,
    mails_arrive,
    running_stack,
    sign_from,
    until_intake_answers,
)
from tests.support import delete_topics

pytestmark = pytest.mark.slow

SERVICES = ("intake", "tally", "notify")


@dataclass(frozen=True)
class SecureKafka:
    bootstrap: str
    security: BrokerSecurity

    def access(self, user: str, *, password: str | None = None) -> KafkaAccess:
        return self.security.access(self.bootstrap, user, password=password)


@pytest.fixture(scope="session")
def secure_kafka() -> SecureKafka:
    """The secure profile's broker (29092), started unless it answers; left running like the
    test profile's (``make test`` stops it with ``devstack down --profile secure``)."""
    from devstack.layout import SECURE
    from devstack.processes import port_open
    from devstack.stack import Stack

    if shutil.which("java") is None or shutil.which("openssl") is None:
        pytest.skip("the secure broker needs Java 17 and openssl (make test installs Java)")
    broker = Stack(SECURE, {}).kafka
    assert broker.security is not None
    if not port_open("127.0.0.1", SECURE.kafka_port):
        broker.start()
    return SecureKafka(broker.bootstrap, broker.security)


@pytest.fixture
async def secure_topics(secure_kafka: SecureKafka) -> AsyncIterator[Topics]:
    """This test's topics on the secure broker, and each service's ACLs on them, made by admin."""
    mine = Topics(prefix=f"s{uuid.uuid4().hex[:10]}.")
    admin = secure_kafka.access("admin")
    await ensure_topics(admin, mine, signature_partitions=3, erasure_bound_s=TEST_ERASURE_BOUND_S)
    grants = service_grants(mine, tally_group=f"{mine.prefix}tally", notify_groups=f"{mine.prefix}notify-")
    await create_acls(admin, grants)
    yield mine
    await delete_topics(admin, mine)
    await delete_acls(admin, grants)


@pytest.fixture
def secure_stack(
    infra: Infra, secure_kafka: SecureKafka, secure_topics: Topics, smtp_sink: SmtpSink, tmp_path: Path
) -> Iterator[dict[str, str]]:
    env = {**env_for(infra, secure_topics), "CLAMEUR_KAFKA": secure_kafka.bootstrap}
    logins = {name: kafka_login_env(secure_kafka.access(name)) for name in SERVICES}
    with running_stack(env, smtp_sink.port, tmp_path, env_of=logins) as services:
        yield {name: service.url for name, service in services.items()}


def test_a_signature_is_counted_and_mailed_with_each_service_as_its_own_user(
    secure_stack: dict[str, str], secure_kafka: SecureKafka, secure_topics: Topics, smtp_sink: SmtpSink
) -> None:
    intake, tally = secure_stack["intake"], secure_stack["tally"]
    case_id = f"secure-{uuid.uuid4().hex[:10]}"
    create_case(tally, case_id, milestones=[3])
    zoe, ada, bea = Supporter.unique(), Supporter.unique(), Supporter.unique()
    # intake reads cases.v1 (its ACL) to learn the case tally published there.
    until_intake_answers(202, intake, case_id, 0, email_of=lambda n: zoe.email, timeout=30)
    for n, supporter in ((1, ada), (2, bea)):
        answer = sign_from(
            intake, case_id, n, supporter.email, f"192.0.2.{n}", {"consent": {"updates": True}}
        )
        assert answer.status_code == 202, answer.text
        if supporter is ada:
            # notify read signatures and contacts in its groups and mailed ada to confirm.
            confirm_by_email(smtp_sink, ada.email)
    counts_become(tally, case_id, total=3)
    # Milestone 3: tally's outbox published it on case-events, and notify mailed ada the news.
    news = mails_arrive(smtp_sink, ada.email, 2)[1].message
    assert news["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click", news
    asyncio.run(_intake_is_refused_what_is_not_its_own(secure_kafka, secure_topics))


async def _intake_is_refused_what_is_not_its_own(kafka: SecureKafka, topics: Topics) -> None:
    intake, tally = kafka.access("intake"), kafka.access("tally")
    group = f"{topics.prefix}tally"
    # The controls: tally's own user reads signatures and its group's offsets on the same
    # broker over the same link, so what intake meets below is the ACLs.
    assert await _records_without_group(tally, topics.signatures) >= 1
    assert await _committed_in_group(tally, topics.signatures, group) >= 3

    with pytest.raises(GroupAuthorizationFailedError):
        await _committed_in_group(intake, topics.signatures, group)
    with pytest.raises(GroupAuthorizationFailedError):
        await _records_in_group(intake, topics.signatures, group)
    with pytest.raises(TopicAuthorizationFailedError):
        await _records_without_group(intake, topics.signatures)
    producer = create_producer(intake, client_id="intake", request_timeout_ms=10_000)
    await producer.start()
    try:
        # intake may write signatures (the control) but not suppressions (notify's).
        await producer.send_and_wait(topics.signatures, b"{}", key=b"control")
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(topics.suppressions, b"{}", key=b"forged")
    finally:
        await producer.stop()


async def _records_in_group(access: KafkaAccess, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(
        topic, **client_kwargs(access), group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        await consumer.start()
        batches = await consumer.getmany(timeout_ms=5000)
        return sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()


async def _committed_in_group(access: KafkaAccess, topic: str, group: str) -> int:
    """The sum of ``group``'s committed offsets on ``topic`` (how many records it has taken)."""
    consumer = AIOKafkaConsumer(**client_kwargs(access), group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        committed = [await consumer.committed(TopicPartition(topic, p)) for p in range(3)]
        return sum(offset or 0 for offset in committed)
    finally:
        await consumer.stop()


async def _records_without_group(access: KafkaAccess, topic: str) -> int:
    consumer = AIOKafkaConsumer(
        **client_kwargs(access), auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        await consumer.start()
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        batches = await consumer.getmany(timeout_ms=5000)
        return sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()


async def test_a_wrong_password_is_refused_at_authentication(secure_kafka: SecureKafka) -> None:
    host, port = secure_kafka.bootstrap.split(":")

    async def log_in(access: KafkaAccess) -> None:
        arguments = {k: v for k, v in client_kwargs(access).items() if k != "bootstrap_servers"}
        connection = await create_conn(host, int(port), request_timeout_ms=10_000, **arguments)
        connection.close()

    await log_in(secure_kafka.access("intake"))  # the control: the right password logs in
    with pytest.raises(SaslAuthenticationFailed):
        await log_in(secure_kafka.access("intake", password="not-" + "intakes-password"))
