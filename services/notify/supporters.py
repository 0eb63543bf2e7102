"""Who notify may write to, folded from signatures.v2.  Pure functions, no I/O.

Schema-2 signatures carry no email (contacts.v1 does, see :mod:`notify.contacts`): here
notify keeps per (case, supporter) whether they asked for news, whether the case awaits
their confirmation, when they first signed, and when they confirmed.  A signature
asking for neither leaves nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from clameur.events import (
    SignatureAccepted,
    SignatureConfirmed,
    SignatureLogEvent,
    SignaturesRejected,
    SupporterErased,
)
from clameur.supporters import SupporterKeys


def supporter_key(secret: str, email: str) -> str:
    """The supporter key of ``email``, exactly as intake computes it (``clameur.supporters``).

    Raises ``ValueError`` when ``email`` is not an address.
    """
    return SupporterKeys.from_master(secret).of_address(email)


@dataclass(frozen=True)
class Subscription:
    """A (case, supporter) notify may write to; ``signed_at`` is their first signature of it."""

    case_id: str
    supporter_key: str
    signed_at: datetime
    wants_updates: bool
    awaits_confirmation: bool


@dataclass
class _Pair:
    subscription: Subscription | None = None
    confirmed_at: datetime | None = None
    rejected: bool = False


@dataclass(frozen=True)
class SupporterChanges:
    """What a batch of signatures.v2 changes, per (case, supporter), to apply in this order.

    ``erased`` supporters lose every subscription and pending delivery first (and their
    erasure time is kept), then ``rejected`` pairs lose their unconfirmed subscription,
    then ``subscriptions`` are upserted, then ``confirmed`` pairs are marked confirmed
    (earliest time wins).
    """

    erased: dict[str, datetime] = field(default_factory=dict)
    """Supporter key to the time of its latest ``SupporterErased`` in the batch."""

    subscriptions: list[Subscription] = field(default_factory=list)
    confirmed: dict[tuple[str, str], datetime] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    recorded: int = 0
    """Signatures that asked for news or await confirmation (the ``supporters_recorded`` metric)."""


def needs_an_address(signature: SignatureAccepted) -> bool:
    """Notify will write to this signer: for news, or to confirm the signature."""
    return signature.consent.updates or signature.awaits_confirmation


def fold_signatures(events: Iterable[SignatureLogEvent], erased: Mapping[str, datetime]) -> SupporterChanges:
    """Fold a batch of signatures.v2, in log order, into the changes to store.

    - A signature received at or before its supporter's erasure (``erased``: key to
      erasure time) is a replay of data the supporter asked us to forget: skipped.
    - Per (case, supporter): the earliest signature is when they signed; asking for news
      or awaiting confirmation once is enough.
    - ``SignaturesRejected`` drops what the batch held for the pair unless it was
      confirmed before it in the log ("It wasn't me" takes back only pending signatures).
    - ``SupporterErased`` drops what the batch held for the supporter before it in the
      log; what they sign after it is a new consent.
    - Other events of the topic (invalidations) change nothing here.
    """
    pairs: dict[tuple[str, str], _Pair] = {}
    forgotten: dict[str, datetime] = {}
    recorded = 0
    for event in events:
        if isinstance(event, SupporterErased):
            forgotten[event.supporter_key] = max(
                event.occurred_at, forgotten.get(event.supporter_key, event.occurred_at)
            )
            for pair_key in [k for k in pairs if k[1] == event.supporter_key]:
                del pairs[pair_key]
            continue
        if isinstance(event, SignatureAccepted):
            if not needs_an_address(event):
                continue
            erased_at = erased.get(event.supporter_key)
            if erased_at is not None and event.received_at <= erased_at:
                continue
            recorded += 1
            pair = pairs.setdefault((event.case_id, event.supporter_key), _Pair())
            pair.subscription = _merge(pair.subscription, event)
        elif isinstance(event, SignatureConfirmed):
            pair = pairs.setdefault((event.case_id, event.supporter_key), _Pair())
            if pair.confirmed_at is None or event.occurred_at < pair.confirmed_at:
                pair.confirmed_at = event.occurred_at
        elif isinstance(event, SignaturesRejected):
            pair = pairs.setdefault((event.case_id, event.supporter_key), _Pair())
            if pair.confirmed_at is None:
                pair.rejected, pair.subscription = True, None
    return SupporterChanges(
        subscriptions=[p.subscription for p in pairs.values() if p.subscription is not None],
        confirmed={key: p.confirmed_at for key, p in pairs.items() if p.confirmed_at is not None},
        rejected=[key for key, p in pairs.items() if p.rejected],
        recorded=recorded,
        erased=forgotten,
    )


def _merge(current: Subscription | None, signature: SignatureAccepted) -> Subscription:
    if current is None:
        return Subscription(
            signature.case_id,
            signature.supporter_key,
            signature.received_at,
            signature.consent.updates,
            signature.awaits_confirmation,
        )
    return Subscription(
        current.case_id,
        current.supporter_key,
        min(current.signed_at, signature.received_at),
        current.wants_updates or signature.consent.updates,
        current.awaits_confirmation or signature.awaits_confirmation,
    )
