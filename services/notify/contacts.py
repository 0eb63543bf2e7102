"""How to write to a supporter, from contacts.v1, kept sealed in Postgres.

- :class:`ContactCipher` seals the email and the first name with AES-GCM under the
  ``contact-at-rest`` key derived from ``CLAMEUR_SECRET`` (never stored in the
  database), a fresh random nonce per value, and the supporter key and field name as
  associated data: a dump alone reveals no address, and a sealed value moved to another
  row or column does not open.
- :class:`ContactsApplier` applies a batch of contacts.v1 (a ``Contact``, or a null
  value: the tombstone that erases it) with the consumer's offsets in one transaction,
  with the address's keyed hash (the send-time suppression check), skipping a contact
  recorded before its supporter's erasure (``notify.erasures``),
  then writes the confirmation emails that waited for these contacts
  (:func:`notify.ledger.request_confirmations`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.structs import ConsumerRecord
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clameur.consumer import Batch
from clameur.events import Contact, decode_contact
from clameur.keys import Purpose, derive_key
from clameur.topics import CONTACTS_TICK_KEY
from notify.ledger import _SUPPORTER_LIST_LOCK, GroupApplier, request_confirmations
from notify.suppressions import AddressHashes

if TYPE_CHECKING:
    import asyncpg

    Pool = asyncpg.Pool[Any]

_NONCE_BYTES = 12


class ContactCipher:
    """Seals and opens contact fields; one per process, built from the master secret."""

    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive_key(secret, Purpose.CONTACT_AT_REST))

    def seal(self, supporter_key: str, field: str, value: str) -> bytes:
        """``nonce || ciphertext``: a new nonce each time, so equal values look unrelated."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode(), _associated(supporter_key, field))

    def open(self, supporter_key: str, field: str, sealed: bytes) -> str:
        """The clear value.  Raises ``cryptography.exceptions.InvalidTag`` if altered or moved."""
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, _associated(supporter_key, field)).decode()


def _associated(supporter_key: str, field: str) -> bytes:
    return f"clameur.notify.contact.v1|{field}|{supporter_key}".encode()


@dataclass(frozen=True)
class ContactRecord:
    """One record of contacts.v1: a contact, a tombstone (``contact`` None), or a tick."""

    supporter_key: str
    contact: Contact | None
    tick: bool = False


def decode_contact_record(record: ConsumerRecord[bytes, bytes]) -> ContactRecord:
    """Read a record with its key; raises ``ValueError`` (poison) on a keyless or mismatched one."""
    if record.key == CONTACTS_TICK_KEY:
        return ContactRecord("", None, tick=True)
    if not record.key:
        raise ValueError("a contact record has no key")
    key = record.key.decode()
    if record.value is None:
        return ContactRecord(key, None)
    contact = decode_contact(record.value)
    if contact.supporter_key != key:
        raise ValueError("a contact's supporter key differs from its record key")
    return ContactRecord(key, contact)


class ContactsApplier(GroupApplier):
    """``BatchApplier`` for contacts.v1: the sealed contacts, latest per supporter wins."""

    def __init__(self, pool: Pool, group_id: str, cipher: ContactCipher, hashes: AddressHashes) -> None:
        super().__init__(pool, group_id)
        self.cipher = cipher
        self.hashes = hashes

    async def apply(self, batch: Batch[ContactRecord]) -> None:
        latest: dict[str, ContactRecord] = {}
        for consumed in batch.events:
            if not consumed.event.tick:
                latest[consumed.event.supporter_key] = consumed.event  # log order: the last one holds
        erased = [key for key, record in latest.items() if record.contact is None]
        contacts = [record.contact for record in latest.values() if record.contact is not None]
        await batch.previous_applied()  # the BatchApplier contract
        async with self.pool.acquire() as connection, connection.transaction():
            # Shared with other folds, exclusive with an erasure: an erasure either committed
            # before (its time is read below) or deletes what this batch writes.
            await connection.execute(_SUPPORTER_LIST_LOCK.format(mode="_shared"))
            contacts = await _not_erased(connection, contacts)
            if erased:
                await connection.execute(
                    "DELETE FROM notify.contacts WHERE supporter_key = ANY($1::text[])", erased
                )
            if contacts:
                await self._upsert(connection, contacts)
                await request_confirmations(connection, [c.supporter_key for c in contacts])
            await self.offsets.store(connection, batch.topic, batch.next_offsets)

    async def _upsert(self, connection: Any, contacts: list[Contact]) -> None:
        seal = self.cipher.seal
        await connection.execute(
            """
            INSERT INTO notify.contacts AS c
                (supporter_key, email_sealed, first_name_sealed, locale, recorded_at, address_hash)
            SELECT * FROM unnest(
                $1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::timestamptz[], $6::text[])
            ON CONFLICT (supporter_key) DO UPDATE
                SET email_sealed = EXCLUDED.email_sealed, first_name_sealed = EXCLUDED.first_name_sealed,
                    locale = EXCLUDED.locale, recorded_at = EXCLUDED.recorded_at,
                    address_hash = EXCLUDED.address_hash
                WHERE c.recorded_at <= EXCLUDED.recorded_at
            """,
            [c.supporter_key for c in contacts],
            [seal(c.supporter_key, "email", c.email.strip()) for c in contacts],
            [seal(c.supporter_key, "first_name", c.first_name) for c in contacts],
            [c.locale for c in contacts],
            [c.recorded_at for c in contacts],
            [self._address_hash(c.email) for c in contacts],
        )

    def _address_hash(self, email: str) -> str | None:
        # intake validated the address; one it could not canonicalise is stored without a
        # hash rather than stopping the whole topic (such an address is never mailed anyway).
        try:
            return self.hashes.of(email)
        except ValueError:
            return None


async def _not_erased(connection: Any, contacts: list[Contact]) -> list[Contact]:
    """The contacts recorded after their supporter's last erasure (if any).

    A contact recorded at or before it is a replay of what the supporter asked us to
    forget (its tombstone may come later in the log, or be compacted away): skipped.
    """
    if not contacts:
        return contacts
    rows = await connection.fetch(
        "SELECT supporter_key, erased_at FROM notify.erasures WHERE supporter_key = ANY($1::text[])",
        [c.supporter_key for c in contacts],
    )
    erased = {row["supporter_key"]: row["erased_at"] for row in rows}
    return [c for c in contacts if c.supporter_key not in erased or c.recorded_at > erased[c.supporter_key]]
