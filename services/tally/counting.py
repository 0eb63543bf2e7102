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
from datetime import datetime
from typing import Literal, NamedTuple, NotRequired, Protocol, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from clameur.events import Action, decode_signature, is_case_id, utc_now

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


class Countable(Protocol):
    """What counting reads of a signature (a ``SignatureAccepted`` or a :class:`CountedSignature`)."""

    @property
    def case_id(self) -> str: ...
    @property
    def supporter_key(self) -> str: ...
    @property
    def action(self) -> Action: ...
    @property
    def signature_id(self) -> UUID: ...
    @property
    def country(self) -> str: ...
    @property
    def locale(self) -> str: ...
    @property
    def received_at(self) -> datetime: ...


S = TypeVar("S", bound=Countable)


class CountedSignature(NamedTuple):
    """The fields of a ``SignatureAccepted`` that tally stores and counts (cheap to build)."""

    case_id: str
    supporter_key: str
    action: Action
    signature_id: UUID
    country: str
    locale: str
    received_at: datetime


def counted(signature: Countable) -> CountedSignature:
    return CountedSignature(
        signature.case_id,
        signature.supporter_key,
        signature.action,
        signature.signature_id,
        signature.country,
        signature.locale,
        signature.received_at,
    )


# ``SignatureAccepted`` field for field, as TypedDicts: pydantic-core validates them with the
# same rules as the model but builds no model instances (three per record), which makes
# decoding three times cheaper.  Both the alias ``schema`` and the name ``schema_version``
# are checked (the model reads either); a record this stricter check refuses is decoded
# again by the model itself, which has the last word on poison.
class _Consent(TypedDict):
    __pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[misc]
    updates: NotRequired[bool]


class _Source(TypedDict):
    __pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[misc]
    widget: NotRequired[str | None]
    page_url: NotRequired[str | None]
    referrer: NotRequired[str | None]
    partner: NotRequired[str | None]


class _SignatureFields(TypedDict):
    __pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[misc]
    event_id: NotRequired[UUID]
    schema: NotRequired[int]
    schema_version: NotRequired[int]
    occurred_at: NotRequired[AwareDatetime]
    type: NotRequired[Literal["SignatureAccepted"]]
    signature_id: NotRequired[UUID]
    case_id: str
    action: NotRequired[Action]
    first_name: str
    last_name: str
    country: str
    postal_code: NotRequired[str | None]
    locale: str
    supporter_key: str
    email: NotRequired[str | None]
    consent: NotRequired[_Consent]
    source: NotRequired[_Source]
    received_at: NotRequired[AwareDatetime]


_SIGNATURE_FIELDS = TypeAdapter(_SignatureFields).validator


def _decode_fields(raw: bytes) -> CountedSignature:
    try:
        fields = _SIGNATURE_FIELDS.validate_json(raw)
    except ValidationError:
        return counted(decode_signature(raw))  # the model decides (raises on poison)
    signature_id = fields.get("signature_id")
    return CountedSignature(
        fields["case_id"],
        fields["supporter_key"],
        fields.get("action", Action.SIGNATURE),
        signature_id if signature_id is not None else uuid4(),  # the model's default
        fields["country"],
        fields["locale"],
        fields.get("received_at") or utc_now(),
    )


def decode_countable(raw: bytes) -> CountedSignature:
    """A ``SignatureAccepted`` fit to count, or ``ValueError`` (the record is poison).

    Beyond the event's schema: a slug case id, an ISO 3166-1 alpha-2 country in upper
    case, a non-empty supporter key and locale of sane length.  A counter keyed by a
    malformed country would be wrong forever, so such records go to the DLQ instead.
    """
    signature = _decode_fields(raw)  # pydantic.ValidationError is a ValueError
    if not is_case_id(signature.case_id):
        raise ValueError("case_id is not a case slug")
    if not _COUNTRY.match(signature.country):
        raise ValueError("country is not an ISO 3166-1 alpha-2 code in upper case")
    if not 0 < len(signature.supporter_key) <= _MAX_SUPPORTER_KEY:
        raise ValueError("supporter_key is empty or too long")
    if not 0 < len(signature.locale) <= _MAX_LOCALE:
        raise ValueError("locale is empty or too long")
    return signature


def supporter_action(signature: Countable) -> SupporterAction:
    return SupporterAction(signature.case_id, signature.supporter_key, signature.action.value)


def first_of_each(signatures: Iterable[S]) -> dict[SupporterAction, S]:
    """The first signature of each supporter, case and action, in the order given.

    A batch can hold the same supporter twice (a double click); only the first is a
    candidate to count, like the first one ``ON CONFLICT DO NOTHING`` would keep.
    """
    first: dict[SupporterAction, S] = {}
    for signature in signatures:
        first.setdefault(supporter_action(signature), signature)
    return first


def counter_deltas(new_signatures: Iterable[Countable]) -> dict[CounterKey, int]:
    """What newly counted signatures add: per case its total, per country and per action."""
    # Count (case, country, action) first: one C-level tally per signature, then a few
    # additions per distinct triple (a surge has thousands of signatures, dozens of triples).
    triples = Counter((s.case_id, s.country, str(s.action)) for s in new_signatures)
    return deltas_of_groups(triples)


def deltas_of_groups(groups: Mapping[tuple[str, str, str], int]) -> dict[CounterKey, int]:
    """Counter deltas from new signatures grouped by ``(case_id, country, action)``."""
    deltas: Counter[CounterKey] = Counter()
    for (case_id, country, action), count in groups.items():
        deltas[CounterKey(case_id, TOTAL, "")] += count
        deltas[CounterKey(case_id, COUNTRY, country)] += count
        deltas[CounterKey(case_id, ACTION, action)] += count
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

    def add(self, signatures: Iterable[S]) -> list[S]:
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
