"""The one place intake reads aiokafka's private producer state: its sender task.

aiokafka (0.14) runs a producer's sends in a task of its private ``Sender``
(``producer._sender.sender_task``) and offers no public way to see that task or to stop
it alone (``stop()`` waits for the flush first):

- if that task ends (an error aiokafka did not expect), the producer takes records and
  never sends them; only the task says so, and the publisher replaces such a producer;
- ``producer.stop()`` waits for the sender to flush, which never happens while the broker
  is down; a producer being retired then needs its sender loop cancelled, or it retries
  forever in the background.

``tests/intake/test_producer_internals.py`` pins both behaviours against the installed
aiokafka, so an upgrade that moves them fails there, not silently in production.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer


def sender_stopped(producer: AIOKafkaProducer) -> bool:
    """True once the started producer's sender task has ended: nothing it holds will be sent."""
    task = _sender_task(producer)
    return task is not None and task.done()


async def stop_sender(producer: AIOKafkaProducer) -> None:
    """Cancel the producer's sender loop and wait for it to end (a no-op if it is not running).

    The loop's own end is not raised here (cancelled before it ran, it ends cancelled);
    a cancellation of the caller is.
    """
    task = _sender_task(producer)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})


def _sender_task(producer: AIOKafkaProducer) -> asyncio.Task[None] | None:
    task: asyncio.Task[None] | None = producer._sender.sender_task  # private: see the module docstring
    return task
