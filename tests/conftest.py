"""Where the tests get a real Kafka and a real Postgres, in this order:

1. existing ones named by ``CLAMEUR_TEST_KAFKA`` and ``CLAMEUR_TEST_DATABASE_URL``
   (the DSN of a database whose role may create databases);
2. testcontainers, when a Docker engine answers;
3. the local provisioning of ``make up`` with the ``test`` profile: its own ports
   (Kafka 19092, Postgres 15433) and data under ``.cache/test``, so a test run never
   touches the dev stack.

Each pytest session gets its own database (both schemas migrated); each test its own
topics (a unique prefix), consumer groups and case ids.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clameur.database import migrate
from clameur.topics import Topics, ensure_topics
from devstack.databases import create_database, drop_database
from devstack.mailsink import SmtpSink, on_loopback
from tests.support import base_env, delete_topics, free_port

TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
TEST_ADMIN_TOKEN = "test-admin-token-0123456789"
TEST_ERASURE_BOUND_S = 5.0
"""The tests' erasure bound: personal data outlives its erasure on a topic at most this long."""


@dataclass(frozen=True)
class Infra:
    kafka: str
    server_dsn: str
    """A DSN on the server whose role may create databases."""
    database_url: str
    """This session's own database, tally and notify schemas migrated."""
    source: str


def _docker_answers() -> bool:
    if shutil.which("docker") is None and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # testcontainers' own dependency

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


def _from_docker(stack: ExitStack) -> tuple[str, str]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft())
    postgres = stack.enter_context(
        PostgresContainer(
            "postgres:15", username="clameur", password="clameur", dbname="clameur", driver=None
        )
    )
    return kafka.get_bootstrap_server(), postgres.get_connection_url()


def _from_local_stack() -> tuple[str, str]:
    """Start the test profile's Kafka and Postgres if needed; reuse ones already running.

    They are left running for the next session (several may share them);
    ``make test`` stops them afterwards.
    """
    from devstack.layout import TEST
    from devstack.processes import port_open
    from devstack.stack import Stack

    stack = Stack(TEST, {})
    # A broker or server already answering on the test ports (another checkout's test
    # stack, a session still running) is shared: every test isolates its own data.
    if not port_open("127.0.0.1", TEST.kafka_port):
        stack.kafka.start()
    if not port_open("127.0.0.1", TEST.postgres_port):
        stack.postgres.start()
    return stack.kafka.bootstrap, stack.postgres.dsn


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with ExitStack() as stack:
        if os.environ.get("CLAMEUR_TEST_KAFKA") and os.environ.get("CLAMEUR_TEST_DATABASE_URL"):
            kafka, server_dsn = os.environ["CLAMEUR_TEST_KAFKA"], os.environ["CLAMEUR_TEST_DATABASE_URL"]
            source = "existing services named by CLAMEUR_TEST_KAFKA and CLAMEUR_TEST_DATABASE_URL"
        elif os.environ.get("CLAMEUR_TEST_NO_DOCKER") != "1" and _docker_answers():
            kafka, server_dsn = _from_docker(stack)
            source = "testcontainers (a Docker engine answered)"
        else:
            kafka, server_dsn = _from_local_stack()
            source = "the local test stack (.cache/test: Kafka 127.0.0.1:19092, Postgres 127.0.0.1:15433)"
        name = f"clameur_test_{uuid.uuid4().hex[:8]}"
        database_url = asyncio.run(create_database(server_dsn, name))
        for schema in ("tally", "notify"):
            migrate(schema, database_url)
        print(f"\n[clameur tests] Kafka {kafka}, Postgres database {name}: from {source}")
        try:
            yield Infra(kafka=kafka, server_dsn=server_dsn, database_url=database_url, source=source)
        finally:
            with suppress(Exception):
                asyncio.run(drop_database(server_dsn, name))


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("CLAMEUR_TEST_KAFKA") and os.environ.get("CLAMEUR_TEST_DATABASE_URL"):
        return "clameur: Kafka and Postgres from CLAMEUR_TEST_KAFKA / CLAMEUR_TEST_DATABASE_URL"
    return "clameur: Kafka and Postgres from testcontainers if Docker answers, else the local test stack"


@pytest.fixture
def new_id() -> Callable[..., str]:
    """``new_id("nawal")`` → ``"nawal-3f9c2a1b7d"``: a case id (or name) no other test uses."""

    def make(prefix: str = "case") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
async def topics(infra: Infra) -> AsyncIterator[Topics]:
    """Every topic under a prefix of this test's own (signatures: 3 partitions)."""
    mine = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    await ensure_topics(infra.kafka, mine, signature_partitions=3, erasure_bound_s=TEST_ERASURE_BOUND_S)
    yield mine
    await delete_topics(infra.kafka, mine)


def env_for(infra: Infra, topics: Topics) -> dict[str, str]:
    """CLAMEUR_* variables for a service on the test stack and these topics."""
    return {
        **base_env(),
        "CLAMEUR_ENV": "test",
        "CLAMEUR_KAFKA": infra.kafka,
        "CLAMEUR_DATABASE_URL": infra.database_url,
        "CLAMEUR_TOPIC_PREFIX": topics.prefix,
        "CLAMEUR_SECRET": TEST_SECRET,
        "CLAMEUR_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "CLAMEUR_ERASURE_BOUND_S": str(TEST_ERASURE_BOUND_S),
    }


@pytest.fixture
def service_env(infra: Infra, topics: Topics) -> dict[str, str]:
    """CLAMEUR_* variables for a service of this test (subprocess env or settings)."""
    return {**env_for(infra, topics), "CLAMEUR_LOG_JSON": "true"}


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback that keeps what it accepts (and can refuse: see SmtpSink)."""
    with on_loopback() as sink:
        yield sink


@pytest.fixture
def spare_kafka(tmp_path: Path) -> Iterator[Any]:
    """A private broker this test may stop, kill and start again (needs Java and the jars)."""
    if shutil.which("java") is None:
        pytest.skip("a private broker needs Java 17 (make test installs what it needs)")
    from devstack.kafka import LocalKafka

    broker = LocalKafka(
        "spare-kafka",
        free_port(),
        free_port(),
        tmp_path / "kafka",
        tmp_path / "run",
        tmp_path / "logs",
        heap="384m",
        cleaner_backoff_ms=1000,
        retention_check_interval_ms=1000,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def spare_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private Postgres server this test may stop, kill and start again, schemas migrated."""
    from devstack.postgres import BIN, LocalPostgres

    if not (BIN / "postgres").exists():
        pytest.skip("a private Postgres needs Debian's postgresql-15 (make test installs it)")
    home = tmp_path_factory.mktemp("spare-postgres")
    server = LocalPostgres(home / "data", free_port(), home / "postgres.log", durable=False)
    server.start()
    for schema in ("tally", "notify"):
        migrate(schema, server.dsn)
    try:
        yield server
    finally:
        with suppress(Exception):
            server.kill()
