"""Kafka and Postgres for a bench run: the dev stack's, a run's own topics and database.

A bench uses the dev profile's Kafka (127.0.0.1:9092) and Postgres (5433), or those the
caller names with ``CLAMEUR_KAFKA`` / ``CLAMEUR_DATABASE_URL``; it starts them through
devstack when they are not running, and stops at the end only what it started.  Each run
has its own topic prefix (``bench-<bench>-<run>-``) and, when it needs one, its own
database, dropped at the end unless ``--keep`` is given: two runs never share a record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from bench.common import (
    BenchError,
    Child,
    Children,
    MachineFacts,
    machine_facts,
    new_run_id,
    port_open,
    run_dir,
    say,
)
from clameur.database import migrate
from clameur.events import Action, CaseState, Event
from clameur.kafka import kafka_admin, partitions_of
from clameur.topics import Topics, ensure_topics
from devstack import databases
from devstack.layout import DEV
from devstack.stack import Stack


@dataclass
class Infrastructure:
    """Where Kafka and Postgres are for this run, and which of them the run started."""

    kafka: str
    database_url: str
    stack: Stack
    started: list[str] = field(default_factory=list)

    @classmethod
    def ensure(cls) -> Infrastructure:
        """Kafka and Postgres reachable: the running ones, else the dev profile's, started."""
        stack = Stack(DEV, dict(os.environ))
        kafka_up = stack.external_kafka or port_open(DEV.kafka_port)
        postgres_up = stack.external_database or port_open(DEV.postgres_port)
        infra = cls(stack.kafka_bootstrap, stack.database_url, stack)
        if kafka_up and postgres_up:
            say(f"using the running Kafka ({infra.kafka}) and Postgres ({_safe_dsn(infra.database_url)})")
            return infra
        say("starting the dev profile's Kafka and Postgres (devstack)...")
        stack.start_infrastructure()
        if not kafka_up:
            infra.started.append("kafka")
        if not postgres_up:
            infra.started.append("postgres")
        return infra

    def stop_started(self) -> None:
        """Stop what :meth:`ensure` started (nothing that was running before)."""
        if "kafka" in self.started and self.stack.kafka.stop():
            say("kafka: stopped (this bench started it)")
        if "postgres" in self.started and self.stack.postgres.stop():
            say("postgres: stopped (this bench started it)")
        self.started.clear()


def _safe_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def service_env(
    infra: Infrastructure,
    *,
    topic_prefix: str,
    database_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a service under test: the caller's, plus this run's CLAMEUR_* values."""
    env = dict(os.environ)
    env.update(
        {
            "CLAMEUR_ENV": os.environ.get("CLAMEUR_ENV", "dev"),
            "CLAMEUR_KAFKA": infra.kafka,
            "CLAMEUR_DATABASE_URL": database_url or infra.database_url,
            "CLAMEUR_TOPIC_PREFIX": topic_prefix,
            "CLAMEUR_LOG_JSON": "true",
        }
    )
    env.update(extra or {})
    return env


def tally_service_env(run: BenchRun, topics: Topics, database_url: str, port: int) -> dict[str, str]:
    """Tally's environment in ``run``: on ``port``, with a consumer group of the run's own."""
    return service_env(
        run.infra,
        topic_prefix=topics.prefix,
        database_url=database_url,
        extra={"CLAMEUR_TALLY_PORT": str(port), "CLAMEUR_TALLY_GROUP_ID": f"tally-{run.prefix}"},
    )


def notify_extra(port: int, smtp_port: int) -> dict[str, str]:
    """Notify's own CLAMEUR_* values: its port, its public URL on that port, and the SMTP sink."""
    return {
        "CLAMEUR_NOTIFY_PORT": str(port),
        "CLAMEUR_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "CLAMEUR_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }


# -- topics ---------------------------------------------------------------------------------------


async def create_topics(bootstrap: str, prefix: str, *, signature_partitions: int = 6) -> Topics:
    """Every topic under ``prefix`` (signatures.v2 with ``signature_partitions``)."""
    topics = Topics(prefix=prefix)
    await ensure_topics(bootstrap, topics, signature_partitions=signature_partitions)
    say(f"topics created with prefix {prefix!r} ({signature_partitions} signature partitions)")
    return topics


async def delete_topic_names(bootstrap: str, names: list[str]) -> list[str]:
    """Delete those of ``names`` that exist (a run's topics, after it); returns them."""
    async with kafka_admin(bootstrap) as admin:
        existing = set(await admin.list_topics())
        doomed = [name for name in names if name in existing]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed


async def delete_topics(bootstrap: str, topics: Topics) -> None:
    try:
        doomed = await delete_topic_names(bootstrap, [spec.name for spec in topics.specs()])
    except KafkaError as error:
        say(f"could not delete the run's topics ({type(error).__name__}); delete {topics.prefix}* by hand")
        return
    if doomed:
        say(f"topics deleted: {', '.join(doomed)}")


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (for a topic without transactions: its record count)."""
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, handle: Callable[[bytes | None], None]) -> int:
    """Hand every record's value of ``topic``, up to its end at the call, to ``handle``."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    read = 0
    try:
        partitions = [TopicPartition(topic, p) for p in ends]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        pending = {tp for tp in partitions if ends[tp.partition] > 0}
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=20_000)
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < ends[tp.partition]:
                        handle(record.value)
                        read += 1
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp.partition]:
                    pending.discard(tp)
        return read
    finally:
        await consumer.stop()


def fast_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer for loading a topic before a run: large batches, ``acks=all``."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
        client_id="bench-loader",
    )


async def load_topic(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Put ``(key, value)`` records on ``topic``, partitioned like any keyed producer (murmur2).

    Builds the producer's batches directly (``create_batch``/``send_batch``): several
    times faster than ``send`` per record, which matters for a million records.  Returns
    the number of records once every batch is acknowledged.
    """
    producer = fast_producer(bootstrap)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        batches: dict[int, Any] = {}
        acks: list[asyncio.Future[Any]] = []
        sent = 0
        for key, value in records:
            partition = partitioner(key, partitions, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError("a record larger than a whole batch")
            sent += 1
        for partition, batch in batches.items():
            if batch.record_count():
                batch.close()
                acks.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*acks)
        return sent
    finally:
        await producer.stop()


async def publish_events(bootstrap: str, topic: str, events: Iterable[tuple[str, Event]]) -> None:
    """Publish ``(key, event)`` pairs and wait for their acknowledgements."""
    producer = fast_producer(bootstrap)
    await producer.start()
    try:
        for key, event in events:
            await producer.send_and_wait(topic, value=event.to_json(), key=key.encode())
    finally:
        await producer.stop()


def bench_case(
    case_id: str,
    *,
    goal: int = 1_000_000_000,
    milestones: tuple[int, ...] = (),
    version: int = 1,
) -> CaseState:
    """An open case in French and English that takes signatures, letters and postcards."""
    now = datetime.now(UTC)
    return CaseState(
        case_id=case_id,
        version=version,
        title={"fr": "Libérez Nawal Benaissa (banc d'essai)", "en": "Free Nawal Benaissa (benchmark)"},
        goal=goal,
        milestones=milestones,
        actions=(Action.SIGNATURE, Action.LETTER, Action.POSTCARD),
        locales=("fr", "en"),
        default_locale="fr",
        occurred_at=now,
        updated_at=now,
    )


# -- a run's own database -------------------------------------------------------------------------


async def create_database(dsn: str, name: str) -> str:
    """Create database ``name`` next to ``dsn``'s; returns its DSN."""
    created = await databases.create_database(dsn, name)
    say(f"database {name} created")
    return created


async def drop_database(dsn: str, name: str) -> None:
    await databases.drop_database(dsn, name)
    say(f"database {name} dropped")


async def fetchval(dsn: str, query: str, *args: object) -> Any:
    """One value from one query on a short-lived connection."""
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


async def cleanup(infra: Infrastructure, topics: Topics | None, database: str | None, *, keep: bool) -> None:
    """Delete the run's topics and database (unless ``keep``); failures are said, not raised."""
    if keep:
        say(f"kept: topics {topics.prefix if topics else '-'}*, database {database or '-'}")
        return
    if topics is not None:
        try:
            await delete_topics(infra.kafka, topics)
        except (KafkaError, OSError) as error:
            say(f"could not delete topics {topics.prefix}*: {error}")
    if database is not None:
        try:
            await drop_database(infra.database_url, database)
        except (asyncpg.PostgresError, OSError) as error:
            say(f"could not drop database {database}: {error}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every bench shares."""
    parser.add_argument("--keep", action="store_true", help="keep the run's topics and database")
    parser.add_argument(
        "--keep-infra", action="store_true", help="leave Kafka/Postgres running if this bench started them"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--note", action="append", default=[], help="a note added to the section (repeatable)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a goal is missed too (not only an exactness check)"
    )


@dataclass
class BenchRun:
    """One run of one bench: its id, folder, infrastructure, children, topics and database.

    Use :meth:`open` as a context manager: whatever happens, the children are stopped,
    the topics and database deleted (unless ``keep``) and the infrastructure the run
    started is stopped again (unless ``keep_infra``).
    """

    name: str
    run_id: str
    folder: Path
    infra: Infrastructure
    children: Children
    keep: bool = False
    topics: Topics | None = None
    database: str | None = None
    database_url: str | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, name: str, *, keep: bool = False, keep_infra: bool = False) -> Iterator[BenchRun]:
        run_id = new_run_id()
        folder = run_dir(name, run_id)
        say(f"bench {name}, run {run_id}; logs in {folder}")
        infra = Infrastructure.ensure()
        run = cls(name, run_id, folder, infra, Children(), keep=keep)
        try:
            yield run
        finally:
            run.children.stop_all()
            asyncio.run(cleanup(infra, run.topics, run.database, keep=keep))
            if not keep_infra:
                infra.stop_started()

    @property
    def prefix(self) -> str:
        return f"bench-{self.name}-{self.run_id}-"

    def new_topics(self, *, signature_partitions: int = 6) -> Topics:
        self.topics = asyncio.run(
            create_topics(self.infra.kafka, self.prefix, signature_partitions=signature_partitions)
        )
        return self.topics

    def new_database(self, *schemas: str) -> str:
        """A fresh database for the run with ``schemas`` migrated; returns its DSN."""
        name = f"bench_{self.name}_{self.run_id}"
        dsn = asyncio.run(create_database(self.infra.database_url, name))
        self.database, self.database_url = name, dsn
        for schema in schemas:
            migrate(schema, dsn)
            say(f"schema {schema} migrated in {name}")
        return dsn

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        return self.children.start(name, argv, env, self.folder / f"{name}.log")


Results = TypeVar("Results")


def measured(
    name: str, args: argparse.Namespace, measure: Callable[[BenchRun, argparse.Namespace], Results]
) -> Results | None:
    """``measure(run, args)`` in a fresh run of bench ``name`` (``--keep``, ``--keep-infra`` obeyed).

    ``None`` once it has said what went wrong, when the bench failed (a :class:`BenchError`).
    """
    try:
        with BenchRun.open(name, keep=args.keep, keep_infra=args.keep_infra) as run:
            return measure(run, args)
    except BenchError as error:
        say(f"error: {error}")
        return None


def run_measured(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[BenchRun, argparse.Namespace], Results],
    write_report: Callable[[Results, argparse.Namespace, MachineFacts], int],
) -> int:
    """A bench's ``main``: :func:`measured`, then ``write_report(results, args, facts)``; 2 when it failed."""
    facts = machine_facts()
    results = measured(name, args, measure)
    if results is None:
        return 2
    return write_report(results, args, facts)
