"""Who hears about a case: the consenting supporters, folded from ``SignatureAccepted``.

Pure functions, no I/O.  Notify keeps only what sending needs (email, first name,
locale, and per case the first time they signed); a signature without consent to
updates leaves nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from clameur.events import SignatureAccepted
from clameur.supporters import SupporterKeys


def supporter_key(secret: str, email: str) -> str:
    """The supporter key of ``email``, exactly as intake computes it (``clameur.supporters``).

    Raises ``ValueError`` when ``email`` is not an address.
    """
    return SupporterKeys.from_master(secret).of_address(email)


@dataclass(frozen=True)
class Supporter:
    """A consenting supporter as notify keeps them (the newest signature's details)."""

    supporter_key: str
    email: str
    first_name: str
    locale: str
    received_at: datetime


@dataclass(frozen=True)
class Subscription:
    """A supporter asked news about a case; ``signed_at`` is their first signature of it."""

    case_id: str
    supporter_key: str
    signed_at: datetime


@dataclass(frozen=True)
class SupporterChanges:
    """What a batch of signatures adds to the list: one row per key, one per (case, key)."""

    supporters: list[Supporter]
    subscriptions: list[Subscription]
    recorded: int
    """Consenting signatures that contributed (the ``supporters_recorded`` metric)."""


def is_consenting(signature: SignatureAccepted) -> bool:
    """A signature notify may keep: consent to updates and an email to send them to."""
    return signature.consent.updates and bool(signature.email and signature.email.strip())


def fold_signatures(
    signatures: Iterable[SignatureAccepted], erased: Mapping[str, datetime]
) -> SupporterChanges:
    """Fold a batch into supporter and subscription rows, ready for one upsert each.

    - Only consenting signatures count.
    - A signature received at or before its supporter's erasure (``erased``: key to
      erasure time) is a replay of data the supporter asked us to forget: skipped.  A
      signature received after it is a new, freely given consent.
    - Per supporter the newest signature wins (email, name, locale may change); per
      (case, supporter) the earliest signature is when they signed it.
    """
    newest: dict[str, Supporter] = {}
    earliest: dict[tuple[str, str], Subscription] = {}
    recorded = 0
    for signature in signatures:
        if not is_consenting(signature):
            continue
        key = signature.supporter_key
        erased_at = erased.get(key)
        if erased_at is not None and signature.received_at <= erased_at:
            continue
        recorded += 1
        assert signature.email is not None  # is_consenting checked it
        candidate = Supporter(
            supporter_key=key,
            email=signature.email.strip(),
            first_name=signature.first_name,
            locale=signature.locale,
            received_at=signature.received_at,
        )
        current = newest.get(key)
        if current is None or candidate.received_at >= current.received_at:
            newest[key] = candidate
        subscription = earliest.get((signature.case_id, key))
        if subscription is None or signature.received_at < subscription.signed_at:
            earliest[(signature.case_id, key)] = Subscription(signature.case_id, key, signature.received_at)
    return SupporterChanges(list(newest.values()), list(earliest.values()), recorded)
