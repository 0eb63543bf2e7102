"""Counting, in the campaign's words: which records count, and what a batch adds.

Plain functions with no I/O.  The Postgres applier (:mod:`tally.counter_store`) and the
rebuild of :mod:`tally.reconcile` both fold batches with them, so a replay of
``signatures.v2`` and the live counters agree by construction.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Annotated, Literal, NamedTuple, TypeAlias, TypeVar
from uuid import UUID, uuid4

import msgspec

from clameur.events import (
    Action,
    InvalidationFilter,
    InvalidationRequested,
    InvalidationRevoked,
    SignatureAccepted,
    SignatureConfirmed,
    SignaturesRejected,
    SupporterErased,
    decode_signature_log_event,
    is_case_id,
    utc_now,
)

TOTAL = "total"
COUNTRY = "country"
ACTION = "action"
PENDING = "pending"

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


class CountedSignature(NamedTuple):
    """The fields of a ``SignatureAccepted`` that tally stores and counts (cheap to build).

    The source fields (``email_domain``, ``widget``, ``page_url``, ``partner``) are stored
    for invalidations to filter on; ``awaits_confirmation`` makes the row pending.
    """

    case_id: str
    supporter_key: str
    action: Action
    signature_id: UUID
    country: str
    locale: str
    received_at: datetime
    awaits_confirmation: bool = False
    email_domain: str | None = None
    widget: str | None = None
    page_url: str | None = None
    partner: str | None = None


Countable: TypeAlias = "SignatureAccepted | CountedSignature"
"""What counting reads: the event, or the fields of it that tally decodes on its hot path."""

S = TypeVar("S", bound=Countable)

SignatureLogRecord: TypeAlias = (
    "CountedSignature | SignatureAccepted | SignatureConfirmed | SignaturesRejected | SupporterErased"
    " | InvalidationRequested | InvalidationRevoked"
)
"""One decoded record of signatures.v2, as the counter store applies it, in log order.

The live decoder yields a :class:`CountedSignature` for a signature; tests and tools may
hand the ``SignatureAccepted`` itself."""


def counted(signature: Countable) -> CountedSignature:
    if isinstance(signature, CountedSignature):
        return signature
    source = signature.source
    return CountedSignature(
        signature.case_id,
        signature.supporter_key,
        signature.action,
        signature.signature_id,
        signature.country,
        signature.locale,
        signature.received_at,
        signature.awaits_confirmation,
        signature.email_domain,
        source.widget,
        source.page_url,
        source.partner,
    )


# ``SignatureAccepted`` field for field, as msgspec structs: msgspec checks a record against
# them three times faster than pydantic builds the model (docs/benchmarks.md, tally), which
# at 50,000 records a second is most of a core.  The structs are stricter than the model
# (no lax coercions such as "1" for 1); a record they refuse is decoded again by the
# model, which has the last word on poison (tests/tally/test_decode_parity.py keeps the
# two in step).  Either way, :func:`_check` then applies tally's own rules.
_Aware = Annotated[datetime, msgspec.Meta(tz=True)]


class _Consent(msgspec.Struct, gc=False):
    updates: bool = False


class _Source(msgspec.Struct, gc=False):
    widget: str | None = None
    page_url: str | None = None
    partner: str | None = None


class _SignatureFields(msgspec.Struct, gc=False):
    """Schema 2 of ``SignatureAccepted``: what tally reads of it (unknown fields ignored)."""

    case_id: str
    country: str
    locale: str
    supporter_key: str
    email_domain: str
    schema: Literal[2]
    type: Literal["SignatureAccepted"]
    event_id: UUID | msgspec.UnsetType = msgspec.UNSET
    occurred_at: _Aware | msgspec.UnsetType = msgspec.UNSET
    signature_id: UUID | msgspec.UnsetType = msgspec.UNSET
    action: Action = Action.SIGNATURE
    awaits_confirmation: bool = False
    consent: _Consent | msgspec.UnsetType = msgspec.UNSET  # not used: checked, as the model does
    source: _Source | msgspec.UnsetType = msgspec.UNSET
    received_at: _Aware | msgspec.UnsetType = msgspec.UNSET


_SIGNATURE_FIELDS = msgspec.json.Decoder(_SignatureFields)


def _check(signature: CountedSignature) -> CountedSignature:
    """Tally's checks beyond the event's schema, with the reason a record is refused."""
    if not is_case_id(signature.case_id):
        raise ValueError("case_id is not a case slug")
    if not _COUNTRY.fullmatch(signature.country):
        raise ValueError("country is not an ISO 3166-1 alpha-2 code in upper case")
    if not 0 < len(signature.supporter_key) <= _MAX_SUPPORTER_KEY:
        raise ValueError("supporter_key is empty or too long")
    if not 0 < len(signature.locale) <= _MAX_LOCALE:
        raise ValueError("locale is empty or too long")
    return signature


def _check_supporter(case_id: str, supporter_key: str) -> None:
    if not is_case_id(case_id):
        raise ValueError("case_id is not a case slug")
    if not 0 < len(supporter_key) <= _MAX_SUPPORTER_KEY:
        raise ValueError("supporter_key is empty or too long")


def decode_countable(raw: bytes) -> CountedSignature:
    """A ``SignatureAccepted`` fit to count, or ``ValueError`` (the record is poison).

    Beyond the event's schema: a slug case id, an ISO 3166-1 alpha-2 country in upper
    case, a non-empty supporter key and locale of sane length.  A counter keyed by a
    malformed country would be wrong forever, so such records go to the DLQ instead.
    Another event of signatures.v2 is a ``ValueError`` here: see :func:`decode_log_record`.
    """
    record = decode_log_record(raw)
    if not isinstance(record, CountedSignature):
        raise ValueError(f"a {record.type}, not a SignatureAccepted")
    return record


def decode_log_record(raw: bytes) -> SignatureLogRecord:
    """One record of signatures.v2 fit to apply, or ``ValueError`` (the record is poison).

    A schema-2 ``SignatureAccepted`` (nearly every record) is read by the msgspec fast
    path into a :class:`CountedSignature`; anything it refuses, and every other event
    type, is decoded by the model (:func:`clameur.events.decode_signature_log_event`),
    which has the last word on poison.  Events naming a case and a supporter are checked
    like signatures (a slug case id, a sane supporter key).
    """
    try:
        fields = _SIGNATURE_FIELDS.decode(raw)
    except msgspec.DecodeError:  # also msgspec.ValidationError
        # The model decides (pydantic.ValidationError is a ValueError).
        event = decode_signature_log_event(raw)
        if isinstance(event, SignatureAccepted):
            return _check(counted(event))
        if isinstance(event, SignatureConfirmed | SignaturesRejected):
            _check_supporter(event.case_id, event.supporter_key)
        elif isinstance(event, SupporterErased):
            _check_supporter("erased", event.supporter_key)
        elif not is_case_id(event.case_id):
            raise ValueError("case_id is not a case slug") from None
        return event
    signature_id = fields.signature_id
    received_at = fields.received_at
    source = fields.source
    if source is msgspec.UNSET:
        widget = page_url = partner = None
    else:
        widget, page_url, partner = source.widget, source.page_url, source.partner
    return _check(
        CountedSignature(
            fields.case_id,
            fields.supporter_key,
            fields.action,
            uuid4() if signature_id is msgspec.UNSET else signature_id,  # the model's defaults
            fields.country,
            fields.locale,
            utc_now() if received_at is msgspec.UNSET else received_at,
            fields.awaits_confirmation,
            fields.email_domain,
            widget,
            page_url,
            partner,
        )
    )


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
    pending: int = 0


def case_counts(counters: Iterable[tuple[str, str, int]]) -> CaseCounts:
    """Fold ``(dimension, key, count)`` rows of one case into :class:`CaseCounts` (sorted keys)."""
    total = pending = 0
    by_country: dict[str, int] = {}
    by_action: dict[str, int] = {}
    for dimension, key, count in sorted(counters):
        if dimension == TOTAL:
            total = count
        elif dimension == PENDING:
            pending = count
        elif dimension == COUNTRY:
            by_country[key] = count
        elif dimension == ACTION:
            by_action[key] = count
    return CaseCounts(total, by_country, by_action, pending)


@dataclass(frozen=True)
class SignatureFacts:
    """What a filter reads of a counted signature (the columns of ``tally.signatures`` it matches)."""

    case_id: str
    supporter_key: str
    action: str
    country: str
    received_at: datetime
    email_domain: str | None = None
    widget: str | None = None
    page_url: str | None = None
    partner: str | None = None


def facts_of(signature: Countable) -> SignatureFacts:
    """What a filter reads of a signature: the columns tally stores of it."""
    s = counted(signature)
    return SignatureFacts(
        s.case_id,
        s.supporter_key,
        s.action.value,
        s.country,
        s.received_at,
        s.email_domain,
        s.widget,
        s.page_url,
        s.partner,
    )


def is_empty(invalidation_filter: InvalidationFilter) -> bool:
    """Whether the filter names nothing: it would take out every signature of the case."""
    return all(value is None for value in invalidation_filter.model_dump().values())


def matches(invalidation_filter: InvalidationFilter, signature: SignatureFacts) -> bool:
    """:func:`filter_predicate` in Python: every field given matches (an empty filter: nothing)."""
    f = invalidation_filter
    if is_empty(f):
        return False
    for values, value in (
        (f.email_domains, signature.email_domain),
        (f.widget_keys, signature.widget),
        (f.partners, signature.partner),
        (f.countries, signature.country),
        (f.supporter_keys, signature.supporter_key),
    ):
        if values is not None and value not in values:
            return False
    if f.received_from is not None and not signature.received_at >= f.received_from:
        return False
    if f.received_until is not None and not signature.received_at < f.received_until:
        return False
    prefix = f.page_url_prefix
    return prefix is None or (signature.page_url is not None and signature.page_url.startswith(prefix))


@dataclass
class InMemoryInvalidations:
    """The rules of :mod:`tally.invalidations` over signatures held in memory.

    For a rebuild from the log (and the tests that hold the SQL to it): feed it every
    signature when it is counted (:meth:`counted`), and every invalidation event in log
    order (:meth:`apply`), which returns the counter deltas to add.
    """

    signatures: dict[tuple[str, str, str], SignatureFacts] = field(default_factory=dict)
    held: dict[tuple[str, str, str], UUID] = field(default_factory=dict)
    filters: dict[UUID, InvalidationFilter] = field(default_factory=dict)  # in the order applied
    revoked: set[UUID] = field(default_factory=set)

    def counted(self, signature: SignatureFacts) -> None:
        self.signatures.setdefault((signature.case_id, signature.supporter_key, signature.action), signature)

    def erase(self, supporter_key: str) -> None:
        """The supporter's signatures get markers of their own and lose their email domain, as the rows do."""
        for key in [key for key in self.signatures if key[1] == supporter_key]:
            marked = (key[0], f"erased:{uuid4().hex}", key[2])
            self.signatures[marked] = replace(
                self.signatures.pop(key), supporter_key=marked[1], email_domain=None
            )
            if key in self.held:
                self.held[marked] = self.held.pop(key)

    def apply(self, event: InvalidationRequested | InvalidationRevoked) -> dict[CounterKey, int]:
        """The counter deltas of one invalidation event (empty when it was applied already)."""
        if isinstance(event, InvalidationRequested):
            if event.invalidation_id in self.filters:
                return {}
            self.filters[event.invalidation_id] = event.filter
            taken = [
                key
                for key, s in self.signatures.items()
                if s.case_id == event.case_id and key not in self.held and matches(event.filter, s)
            ]
            self.held.update(dict.fromkeys(taken, event.invalidation_id))
            return self._deltas(event.case_id, taken, -1)
        if event.invalidation_id not in self.filters or event.invalidation_id in self.revoked:
            return {}
        self.revoked.add(event.invalidation_id)
        ids = list(self.filters)
        later = [i for i in ids[ids.index(event.invalidation_id) + 1 :] if i not in self.revoked]
        given_back = []
        for key in [key for key, holder in self.held.items() if holder == event.invalidation_id]:
            heir = next((i for i in later if matches(self.filters[i], self.signatures[key])), None)
            if heir is None:
                del self.held[key]
                given_back.append(key)
            else:
                self.held[key] = heir
        return self._deltas(event.case_id, given_back, 1)

    def _deltas(self, case_id: str, keys: list[tuple[str, str, str]], sign: int) -> dict[CounterKey, int]:
        groups = Counter((case_id, self.signatures[key].country, self.signatures[key].action) for key in keys)
        return {key: sign * count for key, count in deltas_of_groups(groups).items()}


@dataclass
class InMemoryTally:
    """The log folded in memory by the counter store's rules: the rebuild's tally, the tests' reference.

    Signatures awaiting confirmation wait in ``pending`` (by case and supporter) until a
    ``SignatureConfirmed`` within ``expiry`` of their receipt counts them; a rejection
    drops them; an erasure re-keys the supporter's signatures with a marker of their own.
    Invalidations and their revocations take out and give back counted signatures by the
    rules of :class:`InMemoryInvalidations`, which sees every signature as it is counted.
    """

    counters: Counter[CounterKey] = field(default_factory=Counter)
    counted: set[SupporterAction] = field(default_factory=set)
    pending: dict[tuple[str, str], dict[str, CountedSignature]] = field(default_factory=dict)
    confirmed: set[tuple[str, str]] = field(default_factory=set)
    expiry: timedelta = timedelta(days=30)
    invalidations: InMemoryInvalidations = field(default_factory=InMemoryInvalidations)

    def add(self, signatures: Iterable[S]) -> list[S]:
        """Count the signatures not counted (nor pending) yet; returns those it counted at once."""
        new: list[S] = []
        for key, signature in first_of_each(signatures).items():
            supporter = (key.case_id, key.supporter_key)
            if key in self.counted or key.action in self.pending.get(supporter, {}):
                continue
            if signature.awaits_confirmation and supporter not in self.confirmed:
                self.pending.setdefault(supporter, {})[key.action] = counted(signature)
                continue
            new.append(signature)
        self._count(new)
        return new

    def apply(self, records: Iterable[SignatureLogRecord]) -> None:
        """Fold records of signatures.v2 in log order."""
        run: list[Countable] = []
        for record in records:
            if isinstance(record, CountedSignature | SignatureAccepted):
                run.append(record)
                continue
            self.add(run)
            run = []
            if isinstance(record, SignatureConfirmed):
                self._confirm(record)
            elif isinstance(record, SignaturesRejected):
                self.pending.pop((record.case_id, record.supporter_key), None)
            elif isinstance(record, SupporterErased):
                self._erase(record.supporter_key)
            else:
                self.counters.update(self.invalidations.apply(record))
        self.add(run)

    def _confirm(self, confirmation: SignatureConfirmed) -> None:
        supporter = (confirmation.case_id, confirmation.supporter_key)
        self.confirmed.add(supporter)
        waiting = self.pending.pop(supporter, {})
        oldest = confirmation.occurred_at - self.expiry
        self._count([signature for signature in waiting.values() if signature.received_at >= oldest])
        # Those received before the expiry stay pending, as their rows do: a confirmation
        # that occurred earlier (another instance's, later in the log) still counts them.
        older = {action: s for action, s in waiting.items() if s.received_at < oldest}
        if older:
            self.pending[supporter] = older

    def _count(self, new: Sequence[Countable]) -> None:
        self.counted.update(supporter_action(signature) for signature in new)
        self.counters.update(counter_deltas(new))
        for signature in new:
            self.invalidations.counted(facts_of(signature))

    def _erase(self, supporter_key: str) -> None:
        for key in [key for key in self.counted if key.supporter_key == supporter_key]:
            self.counted.discard(key)
            self.counted.add(key._replace(supporter_key=f"erased:{uuid4().hex}"))
        for supporter in [s for s in self.pending if s[1] == supporter_key]:
            self.pending[(supporter[0], f"erased:{uuid4().hex}")] = self.pending.pop(supporter)
        self.confirmed = {s for s in self.confirmed if s[1] != supporter_key}
        self.invalidations.erase(supporter_key)

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
