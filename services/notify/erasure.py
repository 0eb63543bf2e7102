"""Erasure that holds: forget a supporter in notify, on every topic, and across a rebuild.

``POST /v1/admin/supporters/erase`` (admin bearer token) with ``{"email": "..."}``, "It
wasn't me" (:func:`reject_supporter`), unsubscribing from everything and retention all
come down to :meth:`Eraser.forget`, in this order:

1. the suppression, when there is one, is published on suppressions.v1 (ack awaited):
   from then on no rebuild mails the address;
2. a tombstone (the supporter key, a null value) is published on contacts.v1: the
   topic is compacted within the erasure bound (``CLAMEUR_ERASURE_BOUND_S``, with the
   ticks of :mod:`notify.compaction`), after which no segment holds the contact;
3. on erasure and "It wasn't me", ``SupporterErased`` goes to EVERY partition of
   signatures.v2 (explicit partition numbers): tally re-keys the supporter's rows to an
   unlinkable marker in each partition's offset transaction, counts unchanged;
4. notify's rows for the supporter are deleted in one transaction that holds the
   supporter list's lock exclusively (writers hold it shared), and the erasure time is
   recorded: a batch folded concurrently either committed before (its rows are deleted
   here) or skips records older than the erasure.

Publishing comes first: if it fails, nothing is deleted and the caller may simply try
again (every step is idempotent); if the database step fails after it, the topics
already say "forgotten" and a retry finishes the rows.  A rebuild replays the tombstone
(or finds the contact compacted away), the suppression and ``SupporterErased``: the
supporter is neither restored nor mailed.

Erasure on request writes no suppression: the person may sign again later with fresh
consent, and that signature's mail must go out (see :mod:`notify.suppressions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID, uuid4

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from cryptography.exceptions import InvalidTag
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from clameur.admin import AdminDoor
from clameur.events import SupporterErased, Suppression, utc_now
from clameur.kafka import Kafka, partitions_of
from clameur.topics import Topics, tombstone_contact
from clameur.web import Problem
from notify.contacts import ContactCipher
from notify.ledger import _SUPPORTER_LIST_LOCK
from notify.metrics import NotifyMetrics
from notify.supporters import supporter_key
from notify.suppressions import AddressHashes, publish_suppression, record_suppression

if TYPE_CHECKING:
    import asyncpg

    Pool = asyncpg.Pool[Any]
    Connection = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

logger = logging.getLogger(__name__)

ForgetReason = Literal["erased", "rejected", "unsubscribed", "retention", "expired"]


async def address_of(connection: Connection | Pool, cipher: ContactCipher, supporter_key: str) -> str | None:
    """The address notify would write to for this supporter, or ``None`` when it has none.

    Opens ``notify.contacts.email_sealed``; a contact that does not open (the secret
    changed) is as good as none: ``None``.
    """
    sealed = await connection.fetchval(
        "SELECT email_sealed FROM notify.contacts WHERE supporter_key = $1", supporter_key
    )
    if sealed is None:
        return None
    try:
        return cipher.open(supporter_key, "email", bytes(sealed))
    except InvalidTag:
        return None


@dataclass(frozen=True)
class ErasedRows:
    """How many of notify's rows held the supporter, now deleted."""

    contact: int
    subscriptions: int
    pending_deliveries: int


async def delete_supporter_rows(connection: Connection, supporter_key: str) -> ErasedRows:
    """Delete every row notify holds on the supporter; call inside the caller's transaction.

    Every delivery goes: pending news, pending confirmations and reminders, and finished
    ones too (an SMTP server's reply kept in ``last_error`` may quote the address).
    """
    pending = await connection.fetchval(
        "WITH gone AS (DELETE FROM notify.deliveries WHERE supporter_key = $1"
        " RETURNING state) SELECT count(*) FILTER (WHERE state IN ('pending', 'sending')) FROM gone",
        supporter_key,
    )
    await connection.execute("DELETE FROM notify.unsubscriptions WHERE supporter_key = $1", supporter_key)
    await connection.execute(
        "DELETE FROM notify.invalidated_supporters WHERE supporter_key = $1", supporter_key
    )
    subscriptions = await connection.execute(
        "DELETE FROM notify.subscriptions WHERE supporter_key = $1", supporter_key
    )
    contact = await connection.execute("DELETE FROM notify.contacts WHERE supporter_key = $1", supporter_key)
    return ErasedRows(_count(contact), _count(subscriptions), int(pending or 0))


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True)
class Forgotten:
    """What one erasure did: its id, the rows it deleted, whether a suppression now holds."""

    erasure_id: UUID
    erased: ErasedRows
    suppressed: bool
    completes_at: datetime
    """When no topic holds the contact any more: now plus the erasure bound."""


class Eraser:
    """Forgets supporters (see the module's steps); built once when notify's connections open."""

    def __init__(
        self,
        pool: Pool,
        producer: AIOKafkaProducer,
        bootstrap: Kafka,
        topics: Topics,
        secret: str,
        erasure_bound_s: float,
        metrics: NotifyMetrics,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.pool = pool
        self._producer = producer
        self._bootstrap = bootstrap
        self._topics = topics
        self._hashes = AddressHashes(secret)
        self._cipher = ContactCipher(secret)
        self._bound = timedelta(seconds=erasure_bound_s)
        self._metrics = metrics
        self._clock = clock

    async def forget(
        self, supporter_key: str, reason: ForgetReason, *, suppression: Suppression | None = None
    ) -> Forgotten:
        """Forget the supporter everywhere (steps 1-4 of the module).  Idempotent.

        ``SupporterErased`` is published for ``erased`` and ``rejected`` only: an
        unsubscription or retention keeps the signatures as they are.  Raises aiokafka's
        ``KafkaError`` when a publication failed: then nothing in notify's tables changed.
        """
        erasure_id = uuid4()
        if suppression is not None:
            await publish_suppression(self._producer, self._topics.suppressions, suppression)
        await tombstone_contact(self._producer, self._topics.contacts, supporter_key.encode())
        if reason in ("erased", "rejected"):
            await self._announce(SupporterErased(erasure_id=erasure_id, supporter_key=supporter_key))
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(_SUPPORTER_LIST_LOCK.format(mode=""))
            erased = await delete_supporter_rows(connection, supporter_key)
            if suppression is not None:
                await record_suppression(connection, suppression)
            # A batch of signatures or contacts folded while this ran skips what it holds
            # from before now (the fold's erasure check): the supporter is not re-created.
            await connection.execute(
                "INSERT INTO notify.erasures (supporter_key) VALUES ($1)"
                " ON CONFLICT (supporter_key) DO UPDATE SET erased_at = now()",
                supporter_key,
            )
        self._metrics.erasures.labels(reason).inc()
        logger.info("supporter forgotten", extra={"reason": reason, "erasure_id": str(erasure_id)})
        return Forgotten(erasure_id, erased, suppression is not None, self._clock() + self._bound)

    async def _announce(self, erased: SupporterErased) -> None:
        topic = self._topics.signatures
        # Every partition, by number: tally's rows of a supporter sit in every case's partition.
        partitions = await partitions_of(self._bootstrap, topic, client_id="clameur-notify")
        sends = [
            await self._producer.send(topic, erased.to_json(), key=erased.supporter_key.encode(), partition=p)
            for p in partitions
        ]
        for sent in sends:
            await sent

    def suppression(
        self, email: str, reason: Literal["rejected", "unsubscribed"], case_id: str | None
    ) -> Suppression:
        return Suppression(
            address_hash=self._hashes.of(email), case_id=case_id, reason=reason, at=self._clock()
        )

    async def reject(self, supporter_key: str, case_id: str) -> Forgotten:
        """ "It wasn't me" (see :func:`reject_supporter`)."""
        email = await address_of(self.pool, self._cipher, supporter_key)
        suppression = None if email is None else self.suppression(email, "rejected", None)
        logger.info("signatures rejected by the address's owner", extra={"case_id": case_id})
        return await self.forget(supporter_key, "rejected", suppression=suppression)

    async def unsubscribe(self, supporter_key: str, case_id: str | None) -> Forgotten | None:
        """Unsubscribe: a suppression of the case (``None``: every case) from the address.

        From everything, or from a case when no other subscription remains: the contact
        is forgotten too (only the suppression stays).  Returns ``None`` when the contact
        is kept (other cases' news still goes out) or notify had no address for them.
        """
        email = await address_of(self.pool, self._cipher, supporter_key)
        if email is None:
            return None
        suppression = self.suppression(email, "unsubscribed", case_id)
        if case_id is not None and await self._subscribed_elsewhere(supporter_key, case_id):
            await publish_suppression(self._producer, self._topics.suppressions, suppression)
            await record_suppression(self.pool, suppression)
            return None
        return await self.forget(supporter_key, "unsubscribed", suppression=suppression)

    async def holds(self, supporter_key: str) -> bool:
        """Whether notify holds a contact or a subscription of the supporter (not once forgotten)."""
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM notify.contacts WHERE supporter_key = $1)"
                " OR EXISTS (SELECT 1 FROM notify.subscriptions WHERE supporter_key = $1)",
                supporter_key,
            )
        )

    async def _subscribed_elsewhere(self, supporter_key: str, case_id: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM notify.subscriptions s"
                " WHERE s.supporter_key = $1 AND s.case_id <> $2 AND NOT EXISTS ("
                "   SELECT 1 FROM notify.unsubscriptions u"
                "   WHERE u.supporter_key = s.supporter_key AND u.case_id IN ('', s.case_id)))",
                supporter_key,
                case_id,
            )
        )


async def reject_supporter(eraser: Eraser, supporter_key: str, case_id: str) -> Forgotten:
    """ "It wasn't me": never mail this address again, and forget the supporter.

    For POST /v1/reject/{token}: call it AFTER ``SignaturesRejected`` is acknowledged,
    so tally drops the case's pending signatures before ``SupporterErased`` re-keys them.
    Writes a ``rejected`` suppression for every case (when notify still holds the
    address: the hash needs it), tombstones the contact, announces ``SupporterErased``
    and deletes notify's rows.  Idempotent.
    """
    return await eraser.reject(supporter_key, case_id)


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)


class ErasedCounts(BaseModel):
    contact: int = Field(description="the address, first name and locale notify held (0 or 1)")
    subscriptions: int = Field(description="cases they asked news about")
    pending_deliveries: int = Field(description="emails not yet sent, now never sent")


class WhatRemains(BaseModel):
    signatures: str = Field(
        default="still counted in every case's total, under an unlinkable marker"
        " (tally re-keys them on SupporterErased)",
    )
    suppression: bool = Field(description="a keyed hash of the address, never to be mailed again")


class ErasureAnswer(BaseModel):
    status: Literal["erased"] = "erased"
    erasure_id: UUID
    erased: ErasedCounts
    remains: WhatRemains
    completes_at: datetime = Field(
        description="when no topic holds the contact any more (now plus the erasure bound)"
    )


ERASURE_ACTIONS = ("supporter_erased",)
"""The audit's names of what these routes do (``clameur_admin_actions_total``'s ``action``)."""


@dataclass(frozen=True)
class ErasureDesk:
    secret: str
    door: AdminDoor
    eraser: Callable[[], Eraser]
    """The running eraser (it exists while the lifespan runs)."""


def erasure_router(desk: ErasureDesk) -> APIRouter:
    router = APIRouter()

    # A dependency runs before the body is validated: no validation answers to strangers.
    @router.post("/v1/admin/supporters/erase", dependencies=[Depends(desk.door.guard())])
    async def erase(body: ErasureRequest) -> ErasureAnswer:
        try:
            key = supporter_key(desk.secret, body.email)
        except ValueError as invalid:
            raise Problem(
                422,
                "The email must be a valid address.",
                errors=[{"field": "email", "message": str(invalid)}],
            ) from None
        try:
            done = await desk.eraser().forget(key, "erased")
        except KafkaError:
            raise Problem(
                503,
                "The erasure could not be published to Kafka; nothing was deleted yet. "
                "Try again: erasure is idempotent.",
            ) from None
        # By its erasure id: the email asked for is exactly what must not be written down.
        desk.door.record("supporter_erased", str(done.erasure_id))
        rows = done.erased
        return ErasureAnswer(
            erasure_id=done.erasure_id,
            erased=ErasedCounts(
                contact=rows.contact,
                subscriptions=rows.subscriptions,
                pending_deliveries=rows.pending_deliveries,
            ),
            remains=WhatRemains(suppression=done.suppressed),
            completes_at=done.completes_at,
        )

    return router
