"""The outbox: events written in the transaction that caused them, published by a relay.

Delivery is at least once: the relay sends a row, waits for the broker's ack, then marks
it published; a crash in between sends it again, with the same ``event_id``, and
consumers dedupe on it.  Rows are published in id order per topic.  One relay publishes
at a time per set of topics (a transaction-scoped advisory lock), so two tally instances
do not interleave their sends.  Each relay publishes only the rows of its own topics,
which lets two stacks (or two tests) with other topic prefixes share one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from aiokafka import AIOKafkaProducer

from clameur.events import Event
from clameur.logs import describe_error
from clameur.retry import Backoff, RetryPolicy
from tally.metrics import SERVICE, TallyMetrics

logger = logging.getLogger(__name__)

Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"


async def stage(
    connection: Connection, topic: str, key: str, event: Event, *, dedupe_key: str | None = None
) -> bool:
    """Write ``event`` to the outbox in the caller's transaction.

    Returns False when a row with the same ``dedupe_key`` exists (nothing written).
    """
    written = await connection.fetchval(
        """
        INSERT INTO tally.outbox (topic, key, payload, dedupe_key)
        VALUES ($1, $2, $3::text::jsonb, $4)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING id
        """,
        topic,
        key,
        event.to_json().decode(),
        dedupe_key,
    )
    return written is not None


async def stage_many(
    connection: Connection, topic: str, rows: Sequence[tuple[str, Event, str | None]]
) -> int:
    """Write ``(key, event, dedupe_key)`` rows in one statement; returns how many were new."""
    if not rows:
        return 0
    written = await connection.fetch(
        """
        INSERT INTO tally.outbox (topic, key, payload, dedupe_key)
        SELECT $1, key, payload::jsonb, dedupe_key
        FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS r(key, payload, dedupe_key, n)
        ORDER BY n
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING id
        """,
        topic,
        [key for key, _, _ in rows],
        [event.to_json().decode() for _, event, _ in rows],
        [dedupe for _, _, dedupe in rows],
    )
    return len(written)


class OutboxRelay:
    """Publishes unpublished rows of ``topics`` with an idempotent producer until stopped.

    Wakes on :meth:`wake` (tally's own writes) or every ``poll_s`` (another instance's).
    A failure (broker or database away) is logged and retried with backoff; the rows
    stay unpublished until a send is acknowledged.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        producer: AIOKafkaProducer,
        topics: Sequence[str],
        metrics: TallyMetrics,
        *,
        poll_s: float = 0.2,
        batch_size: int = 200,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._topics = sorted(topics)
        self._metrics = metrics
        self._poll_s = poll_s
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock_name = "tally.outbox:" + ",".join(self._topics)

    def wake(self) -> None:
        """Publish soon: a transaction just committed outbox rows."""
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        # From one poll's wait, doubling up to 5 s: rows stay pending, nothing is lost by waiting.
        backoff = Backoff(RetryPolicy(initial_s=self._poll_s, maximum_s=max(self._poll_s, 5.0)))
        while not self._stopping.is_set():
            try:
                published = await self.publish_pending()
            except Exception as error:  # noqa: BLE001 - transient: broker or database away, retry
                delay = backoff.failed()
                logger.warning(
                    "outbox relay failed; retrying in %.1f s",
                    delay,
                    extra={"error": describe_error(error)},
                )
                await self._sleep(delay)
                continue
            backoff.succeeded()
            if published < self._batch_size:
                await self._sleep(self._poll_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
        self._wakeup.clear()

    async def publish_pending(self) -> int:
        """Publish one run of pending rows in id order; returns how many were published.

        Returns 0 without sending when another relay holds the lock for these topics.
        """
        async with self._pool.acquire() as connection, connection.transaction():
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", self._lock_name
            )
            if not locked:
                return 0
            rows = await connection.fetch(
                """
                SELECT id, topic, key, payload::text AS payload FROM tally.outbox
                WHERE published_at IS NULL AND topic = ANY($1::text[])
                ORDER BY id
                LIMIT $2
                """,
                self._topics,
                self._batch_size,
            )
            published: list[int] = []
            failure: Exception | None = None
            for row in rows:
                self._metrics.outbox_publish_attempts.labels(SERVICE).inc()
                try:
                    await self._producer.send_and_wait(
                        row["topic"], value=row["payload"].encode(), key=row["key"].encode()
                    )
                except Exception as error:  # noqa: BLE001 - re-raised after the commit below
                    self._metrics.outbox_publish_failures.labels(SERVICE).inc()
                    failure = error
                    break
                published.append(row["id"])
            # What the broker acknowledged is marked (and committed) even if a later send failed.
            if published:
                await connection.execute(
                    "UPDATE tally.outbox SET published_at = now() WHERE id = ANY($1::bigint[])", published
                )
            pending = await connection.fetchval(
                "SELECT count(*) FROM tally.outbox WHERE published_at IS NULL AND topic = ANY($1::text[])",
                self._topics,
            )
        self._metrics.outbox_pending.labels(SERVICE).set(pending)
        if failure is not None:
            raise failure
        if published:
            logger.debug("outbox rows published", extra={"count": len(published)})
        return len(published)
