"""Counting, in the campaign's words: which records count, and what a batch adds.

Plain functions with no I/O.  The Postgres applier (:mod:`tally.counter_store`) and the
rebuild of :mod:`tally.reconcile` both fold batches with them, so a replay of
``signatures.v1`` and the live counters agree by construction.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from clameur.events import SignatureAccepted, decode_signature, is_case_id

TOTAL = "total"
COUNTRY = "country"
ACTION = "action"

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_MAX_SUPPORTER_KEY = 128
_MAX_LOCALE = 35


class SupporterAction(NamedTuple):
    """The dedupe key: one supporter counts once per case and action."""

    case_id: str
    supporter_key: str
    action: str


class CounterKey(NamedTuple):
    """One counter: ``(case, "total", "")``, ``(case, "country", "FR")``, ``(case, "action", "letter")``."""

    case_id: str
    dimension: str
    key: str


def decode_countable(raw: bytes) -> SignatureAccepted:
    """A ``SignatureAccepted`` fit to count, or ``ValueError`` (the record is poison).

    Beyond the event's schema: a slug case id, an ISO 3166-1 alpha-2 country in upper
    case, a non-empty supporter key and locale of sane length.  A counter keyed by a
    malformed country would be wrong forever, so such records go to the DLQ instead.
    """
    signature = decode_signature(raw)  # pydantic.ValidationError is a ValueError
    if not is_case_id(signature.case_id):
        raise ValueError("case_id is not a case slug")
    if not _COUNTRY.match(signature.country):
        raise ValueError("country is not an ISO 3166-1 alpha-2 code in upper case")
    if not 0 < len(signature.supporter_key) <= _MAX_SUPPORTER_KEY:
        raise ValueError("supporter_key is empty or too long")
    if not 0 < len(signature.locale) <= _MAX_LOCALE:
        raise ValueError("locale is empty or too long")
    return signature


def supporter_action(signature: SignatureAccepted) -> SupporterAction:
    return SupporterAction(signature.case_id, signature.supporter_key, signature.action.value)


def first_of_each(signatures: Iterable[SignatureAccepted]) -> dict[SupporterAction, SignatureAccepted]:
    """The first signature of each supporter, case and action, in the order given.

    A batch can hold the same supporter twice (a double click); only the first is a
    candidate to count, like the first one ``ON CONFLICT DO NOTHING`` would keep.
    """
    first: dict[SupporterAction, SignatureAccepted] = {}
    for signature in signatures:
        first.setdefault(supporter_action(signature), signature)
    return first


def counter_deltas(new_signatures: Iterable[SignatureAccepted]) -> dict[CounterKey, int]:
    """What newly counted signatures add: per case its total, per country and per action."""
    # Count (case, country, action) first: one C-level tally per signature, then a few
    # additions per distinct triple (a surge has thousands of signatures, dozens of triples).
    triples = Counter((s.case_id, s.country, s.action) for s in new_signatures)
    deltas: Counter[CounterKey] = Counter()
    for (case_id, country, action), count in triples.items():
        deltas[CounterKey(case_id, TOTAL, "")] += count
        deltas[CounterKey(case_id, COUNTRY, country)] += count
        deltas[CounterKey(case_id, ACTION, action.value)] += count
    return dict(deltas)


def milestones_crossed(before: int, after: int, milestones: Sequence[int]) -> list[int]:
    """Thresholds passed when a total moves from ``before`` to ``after``: ``before < t <= after``.

    Reaching a threshold exactly counts as crossing it.  Two batches whose intervals do
    not overlap (the total row serialises them) never both cross the same threshold.
    """
    return sorted({threshold for threshold in milestones if before < threshold <= after})


@dataclass(frozen=True)
class CaseCounts:
    """A case's counters as the public sees them."""

    total: int = 0
    by_country: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)


def case_counts(counters: Iterable[tuple[str, str, int]]) -> CaseCounts:
    """Fold ``(dimension, key, count)`` rows of one case into :class:`CaseCounts` (sorted keys)."""
    total = 0
    by_country: dict[str, int] = {}
    by_action: dict[str, int] = {}
    for dimension, key, count in sorted(counters):
        if dimension == TOTAL:
            total = count
        elif dimension == COUNTRY:
            by_country[key] = count
        elif dimension == ACTION:
            by_action[key] = count
    return CaseCounts(total, by_country, by_action)


@dataclass
class InMemoryTally:
    """Counters and the dedupe set in memory: the rebuild's tally, and the reference in tests."""

    counters: Counter[CounterKey] = field(default_factory=Counter)
    counted: set[SupporterAction] = field(default_factory=set)

    def add(self, signatures: Iterable[SignatureAccepted]) -> list[SignatureAccepted]:
        """Count the signatures not counted yet; returns those it counted."""
        new = [signature for key, signature in first_of_each(signatures).items() if key not in self.counted]
        self.counted.update(supporter_action(signature) for signature in new)
        self.counters.update(counter_deltas(new))
        return new

    def as_mapping(self) -> Mapping[CounterKey, int]:
        return {key: count for key, count in self.counters.items() if count}


@dataclass(frozen=True)
class Drift:
    """One counter whose stored value differs from what the signatures say."""

    counter: CounterKey
    stored: int
    expected: int


def drift(stored: Mapping[CounterKey, int], expected: Mapping[CounterKey, int]) -> list[Drift]:
    """Counters that differ (a missing counter is zero), sorted by counter."""
    keys = {key for key, count in stored.items() if count} | {key for key, count in expected.items() if count}
    return [
        Drift(key, stored.get(key, 0), expected.get(key, 0))
        for key in sorted(keys)
        if stored.get(key, 0) != expected.get(key, 0)
    ]
