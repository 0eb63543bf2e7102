"""Addresses never to mail again: suppressions.v1 folded into ``notify.suppressions``.

A suppression names an address by its keyed hash (HMAC-SHA256 under the ``suppression``
key derived from ``CLAMEUR_SECRET``, of the canonical email): it recognises the address
if it comes back, and reveals nothing without the key.  It is either for one case or
for every case (``case_id`` ``None``, stored as ``''``, keyed ``*`` on the topic).

The topic, not the table, is the record: it is compacted and never tombstoned, so a
rebuilt notify (a new database, a new consumer group replaying suppressions.v1 from
offset 0) knows every suppression again before it sends anything.  Whoever writes one
publishes it (waiting for the ack) and also writes it to the table at once
(:func:`record_suppression`), so sending stops without waiting for the consumer.

Who writes one (and who does not):

- "It wasn't me": ``rejected``, every case: this address is never mailed again.
- Unsubscribe: ``unsubscribed``, the case or every case.
- Erasure on request writes NONE: the person may sign again later, with fresh consent,
  and that new signature's mail must go out.  Erasure holds across a replay through
  the contact's tombstone (compaction) and ``SupporterErased``, not a suppression.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from clameur.consumer import Batch
from clameur.events import Suppression
from clameur.keys import Purpose
from clameur.supporters import SupporterKeys
from notify.ledger import GroupApplier

if TYPE_CHECKING:
    import asyncpg

    Pool = asyncpg.Pool[Any]
    Connection = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

EVERY_CASE = ""
"""How the table stores a suppression for every case (the topic's ``*``)."""


class AddressHashes:
    """The suppression hash of an address: built once from the master secret, then reused."""

    def __init__(self, secret: str) -> None:
        self._keys = SupporterKeys.from_master(secret, Purpose.SUPPRESSION)

    def of(self, email: str) -> str:
        """The hash of ``email`` as typed (canonicalised first).  Raises ``ValueError`` if not an address."""
        return self._keys.of_address(email)


def address_hash(secret: str, email: str) -> str:
    """One-off form of :meth:`AddressHashes.of` (build :class:`AddressHashes` once in a loop)."""
    return AddressHashes(secret).of(email)


async def is_suppressed(connection: Connection | Pool, address_hash: str, case_id: str | None) -> bool:
    """Whether mail to this address about ``case_id`` (any case when ``None``) must not go out.

    True when the address is suppressed for every case, or for this very case.
    """
    scopes = [EVERY_CASE] if case_id is None else [EVERY_CASE, case_id]
    found = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM notify.suppressions"
        " WHERE address_hash = $1 AND case_id = ANY($2::text[]))",
        address_hash,
        scopes,
    )
    return bool(found)


async def suppressed_among(
    connection: Connection | Pool, wanted: Collection[tuple[str, str | None]]
) -> set[tuple[str, str | None]]:
    """Which (address hash, case id) pairs must not be mailed: :func:`is_suppressed` for a batch.

    One query for a claimed batch of deliveries; returns the suppressed pairs as given.
    """
    if not wanted:
        return set()
    pairs = list(wanted)
    rows = await connection.fetch(
        """
        SELECT w.address_hash, w.case_id FROM unnest($1::text[], $2::text[]) AS w(address_hash, case_id)
        WHERE EXISTS (
            SELECT 1 FROM notify.suppressions s
            WHERE s.address_hash = w.address_hash AND s.case_id IN ('', COALESCE(w.case_id, '')))
        """,
        [address for address, _ in pairs],
        [case_id for _, case_id in pairs],
    )
    return {(row["address_hash"], row["case_id"]) for row in rows}


async def record_suppression(connection: Connection | Pool, suppression: Suppression) -> None:
    """Store one suppression (idempotent: the first reason and time of a scope stay)."""
    await _store(connection, [suppression])


async def _store(connection: Connection | Pool, suppressions: list[Suppression]) -> None:
    # The first suppression of a scope wins: a later one (a replay, a second click) only
    # repeats it; the reason is for people reading the table, the effect is the same.
    await connection.execute(
        """
        INSERT INTO notify.suppressions (address_hash, case_id, reason, suppressed_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
        ON CONFLICT (address_hash, case_id) DO NOTHING
        """,
        [s.address_hash for s in suppressions],
        [s.case_id or EVERY_CASE for s in suppressions],
        [s.reason for s in suppressions],
        [s.at for s in suppressions],
    )


async def publish_suppression(producer: AIOKafkaProducer, topic: str, suppression: Suppression) -> None:
    """Publish on suppressions.v1 (key ``{hash}:{case or *}``) and wait for the ack."""
    await producer.send_and_wait(topic, suppression.to_json(), key=suppression.key.encode())


class SuppressionApplier(GroupApplier):
    """``BatchApplier`` for suppressions.v1: the table and the offsets in one transaction."""

    async def apply(self, batch: Batch[Suppression]) -> None:
        suppressions = [consumed.event for consumed in batch.events]
        await batch.previous_applied()  # the BatchApplier contract
        async with self.pool.acquire() as connection, connection.transaction():
            if suppressions:
                await _store(connection, suppressions)
            await self.offsets.store(connection, batch.topic, batch.next_offsets)
