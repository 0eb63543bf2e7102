"""What intake relies on in aiokafka's private producer state (intake/producer_internals.py).

If an aiokafka upgrade moves the sender task, these fail here instead of the publisher
silently never replacing a dead producer.
"""

from __future__ import annotations

import asyncio

from intake.producer_internals import sender_stopped, stop_sender

from clameur.kafka import create_producer
from tests.conftest import Infra


async def test_a_producer_not_started_has_no_sender_that_stopped() -> None:
    producer = create_producer("127.0.0.1:1", client_id="test-internals")
    assert not sender_stopped(producer)
    await stop_sender(producer)  # nothing to cancel
    await producer.stop()


async def test_the_sender_task_runs_while_started_and_is_seen_once_it_ends(infra: Infra) -> None:
    producer = create_producer(infra.kafka, client_id="test-internals")
    await producer.start()
    try:
        task = producer._sender.sender_task
        assert isinstance(task, asyncio.Task) and not task.done()
        assert not sender_stopped(producer)
        await stop_sender(producer)
        assert task.done()
        assert sender_stopped(producer)
    finally:
        await producer.stop()


async def test_a_sender_that_died_is_seen_and_stop_still_returns(infra: Infra) -> None:
    producer = create_producer(infra.kafka, client_id="test-internals")
    await producer.start()
    try:
        producer._sender.sender_task.cancel()  # the way a crashed sender looks: its task ended
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sender_stopped(producer)
    finally:
        await asyncio.wait_for(producer.stop(), 10)
