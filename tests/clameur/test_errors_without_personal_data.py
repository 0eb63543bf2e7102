"""A refused record that carries a name and an email leaves neither in its DLQ headers
nor in the log lines about it (docs/privacy.md, "Dead letter queues" and "Logs")."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Gauge
from pydantic import ValidationError

from clameur.consumer import BatchConsumer, BatchLimits, ConsumerMetrics
from clameur.events import SignatureLogEvent, decode_signature_log_event
from clameur.kafka import create_producer, send_to_dlq
from clameur.logs import configure_logging, describe_error
from clameur.retry import RetryPolicy, retry
from clameur.topics import Topics
from tests.clameur.in_memory import InMemoryApplier, InMemoryStore
from tests.support import eventually, read_topic

NAME = "Atena Daemi"
EMAIL = "atena.daemi@example.org"
NEEDLES = (NAME.encode(), EMAIL.encode(), b"atena")

# A signature whose receipt time is, by a widget's bug, the signer's name and address:
# pydantic's error text quotes that input whole.
POISON = orjson.dumps(
    {
        "type": "SignatureAccepted",
        "schema": 2,
        "case_id": "atena-1",
        "country": "IR",
        "locale": "fa",
        "supporter_key": "0" * 64,
        "email_domain": "example.org",
        "received_at": f"{NAME} <{EMAIL}>",
    }
)


def _refusal() -> ValidationError:
    try:
        decode_signature_log_event(POISON)
    except ValidationError as error:
        # The fault this file guards against is real: the error's own text holds both.
        assert NAME in str(error)
        assert EMAIL in str(error)
        return error
    raise AssertionError("the poison record was accepted")


def test_describe_error_names_the_type_and_where_never_the_input() -> None:
    described = describe_error(_refusal())
    assert described == "ValidationError at SignatureAccepted.received_at:datetime_from_date_parsing"
    assert describe_error(TimeoutError("to atena.daemi@example.org")) == "TimeoutError"


async def test_the_dlq_headers_hold_neither_the_name_nor_the_email(infra: Any, topics: Topics) -> None:
    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topics.signatures, value=POISON, key=b"atena-1")
    finally:
        await producer.stop()
    record = await _read_one(infra.kafka, topics.signatures)
    assert record.value == POISON  # the record as the consumer read it
    error = _refusal()

    dlq_producer = create_producer(infra.kafka)
    await dlq_producer.start()
    try:
        await send_to_dlq(dlq_producer, record, error)
    finally:
        await dlq_producer.stop()

    (dead,) = await read_topic(infra.kafka, topics.dlq(topics.signatures), at_least=1)
    headers = dict(dead.headers)
    assert dead.value == POISON  # the raw record is kept, for the erasure bound only
    assert headers["clameur.error.type"] == b"ValidationError"
    assert headers["clameur.error.locations"] == b"SignatureAccepted.received_at:datetime_from_date_parsing"
    for name, value in dead.headers:
        for needle in NEEDLES:
            assert needle not in value.lower(), f"header {name} quotes {needle!r}"


async def _read_one(bootstrap: str, topic: str) -> Any:
    (record,) = await read_topic(bootstrap, topic, at_least=1)
    return record


@pytest.fixture
def rendered_logs() -> Iterator[io.StringIO]:
    """The service's real log configuration (JSON lines), writing into a buffer."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("test", level="INFO", json=True)
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


async def test_a_retry_loop_logs_the_type_and_location_only(rendered_logs: io.StringIO) -> None:
    failures = [_refusal()]

    async def attempt() -> str:
        if failures:
            raise failures.pop()
        return "applied"

    async def no_wait(_: float) -> None:
        return None

    outcome = await retry("apply batch", attempt, RetryPolicy(0.01, 0.02), sleep=no_wait)
    assert outcome == "applied"
    lines = [orjson.loads(line) for line in rendered_logs.getvalue().splitlines()]
    (warning,) = [line for line in lines if line["event"].startswith("apply batch failed")]
    assert warning["error"] == "ValidationError at SignatureAccepted.received_at:datetime_from_date_parsing"
    _assert_clean(rendered_logs.getvalue())


def test_a_logged_traceback_keeps_its_frames_and_loses_the_input(rendered_logs: io.StringIO) -> None:
    try:
        try:
            decode_signature_log_event(POISON)
        except ValidationError as refusal:
            raise RuntimeError(f"batch not applied: {refusal}") from refusal
    except RuntimeError as error:
        assert EMAIL in str(error)  # the wrapping error quotes the input too
        logging.getLogger("clameur.test").exception("unhandled error on POST /v1/signatures")
    (line,) = [orjson.loads(line) for line in rendered_logs.getvalue().splitlines()]
    assert "decode_signature_log_event" in line["exception"]  # where it failed stays readable
    assert "ValidationError at SignatureAccepted.received_at" in line["exception"]
    assert "RuntimeError" in line["exception"]  # the chain, by type
    _assert_clean(rendered_logs.getvalue())


def _assert_clean(text: str) -> None:
    for needle in NEEDLES:
        assert needle.decode() not in text.lower(), f"the log quotes {needle!r}"


async def test_the_consumer_sets_the_poison_aside_and_logs_neither(
    infra: Any, topics: Topics, new_id: Any, rendered_logs: io.StringIO
) -> None:
    """The whole path: a real consumer reads the poison, decodes it, sets it aside."""
    producer = create_producer(infra.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topics.signatures, value=POISON, key=b"atena-1", partition=0)
    finally:
        await producer.stop()
    store: InMemoryStore[SignatureLogEvent] = InMemoryStore()
    dlq_producer = create_producer(infra.kafka)
    consumer = BatchConsumer(
        bootstrap=infra.kafka,
        topic=topics.signatures,
        group_id=new_id("group"),
        decode=decode_signature_log_event,
        applier=InMemoryApplier(store),
        dlq_producer=dlq_producer,
        metrics=ConsumerMetrics(CollectorRegistry(), "privacy"),
        lag=Gauge("lag_records", "Lag.", ["partition"], registry=CollectorRegistry()),
        limits=BatchLimits(
            max_records=50, max_wait_s=0.05, retry=RetryPolicy(initial_s=0.01, maximum_s=10.0)
        ),
        client_id="privacy",
    )
    await dlq_producer.start()
    task = asyncio.create_task(consumer.run())
    try:
        (dead,) = await read_topic(infra.kafka, topics.dlq(topics.signatures), at_least=1, within=30)
        await eventually(
            lambda: _logged(rendered_logs, "record set aside to the DLQ"), within=10, what="the log line"
        )
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=30)
        await dlq_producer.stop()
    assert dead.value == POISON  # the fault happened: this very record was refused
    assert dict(dead.headers)["clameur.error.locations"].startswith(b"SignatureAccepted.received_at:")
    for _, value in dead.headers:
        for needle in NEEDLES:
            assert needle not in value.lower()
    _assert_clean(rendered_logs.getvalue())


async def _logged(logs: io.StringIO, event: str) -> bool:
    return any(orjson.loads(line).get("event") == event for line in logs.getvalue().splitlines())
