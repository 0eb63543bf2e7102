"""The events Clameur's services exchange, one frozen model per type.

Every event is JSON with ``event_id``, ``type``, ``schema`` (a version number) and
``occurred_at`` (UTC).  Consumers ignore fields they do not know, so a producer may
add optional fields without bumping ``schema``; removing or re-typing a field does.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

CASE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
"""A case id is a URL slug: lowercase letters, digits and inner hyphens, 1-64 chars."""

_CASE_ID = re.compile(CASE_ID_PATTERN)


def is_case_id(value: str) -> bool:
    """Whether ``value`` is a well-formed case id (a slug)."""
    # fullmatch: with match, "$" would also accept a trailing newline.
    return bool(_CASE_ID.fullmatch(value))


def utc_now() -> datetime:
    return datetime.now(UTC)


class Action(StrEnum):
    """What a supporter did for a case."""

    SIGNATURE = "signature"
    LETTER = "letter"
    EMAIL = "email"
    TWEET = "tweet"
    POSTCARD = "postcard"


class CaseStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    CLOSED = "closed"


LocalizedText = dict[str, str]
"""Text per locale (``{"fr": "...", "en": "..."}``)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Event(_Frozen):
    """Fields every event carries."""

    event_id: UUID = Field(default_factory=uuid4)
    schema_version: int = Field(default=1, alias="schema")
    occurred_at: AwareDatetime = Field(default_factory=utc_now)

    def to_json(self) -> bytes:
        # pydantic-core's serializer writes the bytes itself, twice as fast as dumping a
        # dict with orjson, and byte for byte the same (tests/intake/test_publisher.py).
        return self.__pydantic_serializer__.to_json(self, by_alias=True)


class Consent(_Frozen):
    updates: bool = False


class SignatureSource(_Frozen):
    """Where a signature came from; every field is optional.

    ``page_url`` is the page without its query string or fragment (they can carry a
    tracking id or a person's details); the referrer is not kept at all.
    """

    widget: str | None = None
    page_url: str | None = None
    partner: str | None = None


Confirmation = Literal["email", "none"]
"""A case's policy: ``email`` counts a signature once its address is confirmed (double
opt-in); ``none`` counts it at once."""


class SignatureAccepted(Event):
    """Intake accepted one action of one supporter for one case (signatures.v2, key: case id).

    Schema 2 carries no personal data: no name, no email, no postal code (``Contact``
    on the compacted contacts.v1 carries what notify needs, and erasure removes it).
    ``supporter_key`` is the HMAC of the canonical email (:mod:`clameur.supporters`): the
    dedupe key.  ``email_domain`` lets operators take a bot wave back out of the counts
    (invalidations) without the address.  ``awaits_confirmation``: the case's policy was
    ``email`` when intake accepted it, so it counts only once ``SignatureConfirmed``.
    """

    type: Literal["SignatureAccepted"] = "SignatureAccepted"
    schema_version: int = Field(default=2, alias="schema")
    signature_id: UUID = Field(default_factory=uuid4)
    case_id: str
    action: Action = Action.SIGNATURE
    country: str
    locale: str
    supporter_key: str
    email_domain: str
    consent: Consent = Consent()
    awaits_confirmation: bool = False
    source: SignatureSource = SignatureSource()
    received_at: AwareDatetime = Field(default_factory=utc_now)


class SignatureConfirmed(Event):
    """The supporter opened their confirmation link for this case (signatures.v2, key: case id).

    Produced by notify.  Counts their pending signatures of the case (tally) and confirms
    their address for its news (notify).  Idempotent: a second one changes nothing.
    """

    type: Literal["SignatureConfirmed"] = "SignatureConfirmed"
    case_id: str
    supporter_key: str


class SignaturesRejected(Event):
    """ "It wasn't me": the address's owner refused the signatures made with it on this case.

    Produced by notify (signatures.v2, key: case id).  Tally drops the pending signatures
    of (case, supporter); counted ones are not touched (they were confirmed).
    """

    type: Literal["SignaturesRejected"] = "SignaturesRejected"
    case_id: str
    supporter_key: str


class SupporterErased(Event):
    """A supporter asked to be forgotten (signatures.v2, sent to every partition).

    Tally replaces the supporter key of their rows with an unlinkable marker: the
    signatures still count, anonymously.
    """

    type: Literal["SupporterErased"] = "SupporterErased"
    erasure_id: UUID
    supporter_key: str


class InvalidationFilter(_Frozen):
    """Which counted signatures of a case an invalidation takes out: every field given must match."""

    email_domains: tuple[str, ...] | None = None
    received_from: AwareDatetime | None = None
    received_until: AwareDatetime | None = None
    widget_keys: tuple[str, ...] | None = None
    page_url_prefix: str | None = None
    partners: tuple[str, ...] | None = None
    countries: tuple[str, ...] | None = None
    supporter_keys: tuple[str, ...] | None = None
    """The ``emails`` of the admin API, as supporter keys: the addresses are not kept."""


class InvalidationRequested(Event):
    """Operators take signatures back out of a case's counts (signatures.v2, key: case id).

    Written by tally's admin API through its outbox; applied in log order, so a replay
    takes out exactly the signatures it took out the first time.
    """

    type: Literal["InvalidationRequested"] = "InvalidationRequested"
    invalidation_id: UUID
    case_id: str
    reason: str
    filter: InvalidationFilter
    requested_by: str


class InvalidationRevoked(Event):
    """Operators restore what an invalidation took out (signatures.v2, key: case id)."""

    type: Literal["InvalidationRevoked"] = "InvalidationRevoked"
    invalidation_id: UUID
    case_id: str
    revoked_by: str


SignatureLogEvent = Annotated[
    SignatureAccepted
    | SignatureConfirmed
    | SignaturesRejected
    | SupporterErased
    | InvalidationRequested
    | InvalidationRevoked,
    Field(discriminator="type"),
]
"""What signatures.v2 holds: a case's actions and what happens to them, in order."""


class Contact(_Frozen):
    """How to write to a supporter (contacts.v1, compacted, key: supporter key).

    The only personal data on any topic, on a topic whose old values compaction removes:
    a null value (a tombstone) erases the supporter's contact.  ``email`` is the address
    as the supporter typed it (trimmed).
    """

    supporter_key: str
    email: str
    first_name: str
    locale: str
    recorded_at: AwareDatetime = Field(default_factory=utc_now)

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)


SuppressionReason = Literal["unsubscribed", "rejected", "erased"]


class Suppression(_Frozen):
    """Never mail this address again, about one case or any (suppressions.v1, compacted).

    ``address_hash`` is the HMAC of the canonical email under the ``suppression`` key: it
    recognises the address if it is typed again, and reveals nothing without it.  Key:
    ``{address_hash}:{case_id or "*"}``.  Never tombstoned.
    """

    address_hash: str
    case_id: str | None = None
    reason: SuppressionReason
    at: AwareDatetime = Field(default_factory=utc_now)

    @property
    def key(self) -> str:
        return f"{self.address_hash}:{self.case_id or '*'}"

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)


class Victory(_Frozen):
    headline: LocalizedText
    message: LocalizedText
    declared_at: AwareDatetime


class CaseState(Event):
    """The whole current state of a case (key: case id; topic compacted, latest wins).

    ``version`` grows by one with every change, so a reader can ignore a stale copy.
    """

    type: Literal["CaseState"] = "CaseState"
    case_id: str
    version: int
    title: LocalizedText
    status: CaseStatus = CaseStatus.OPEN
    goal: int
    milestones: tuple[int, ...] = ()
    actions: tuple[Action, ...] = (Action.SIGNATURE,)
    locales: tuple[str, ...]
    default_locale: str
    target: str | None = None
    victory: Victory | None = None
    # Absent from states written before confirmation existed: those cases counted at once.
    confirmation: Confirmation = "none"
    # Per-country counts below this are published as "other" (not in the admin API).
    small_count_threshold: int = 5
    # Personal data of the case's supporters is erased this long after it is won or closed.
    retention_days: int = 180
    updated_at: AwareDatetime = Field(default_factory=utc_now)

    def title_in(self, locale: str) -> str:
        return localized(self.title, locale, self.default_locale)


class MilestoneReached(Event):
    """A case's total passed a milestone threshold (fires once per case and threshold)."""

    type: Literal["MilestoneReached"] = "MilestoneReached"
    case_id: str
    threshold: int
    total: int
    case_title: LocalizedText
    default_locale: str


class VictoryDeclared(Event):
    """The operators declared a case won: supporters hear the good news."""

    type: Literal["VictoryDeclared"] = "VictoryDeclared"
    case_id: str
    headline: LocalizedText
    message: LocalizedText
    total: int
    case_title: LocalizedText
    default_locale: str


class CaseClosed(Event):
    """A case stopped taking actions without a victory."""

    type: Literal["CaseClosed"] = "CaseClosed"
    case_id: str


class SupportersInvalidated(Event):
    """Tally took these supporters' signatures of a case out of its counts (case-events.v1).

    Notify leaves them out of the case's later mailings.  A large invalidation is sent as
    several of these, ``supporter_keys`` in chunks.
    """

    type: Literal["SupportersInvalidated"] = "SupportersInvalidated"
    case_id: str
    invalidation_id: UUID
    supporter_keys: tuple[str, ...]


class SupportersRestored(Event):
    """An invalidation was revoked: these supporters count again, and hear the case's news."""

    type: Literal["SupportersRestored"] = "SupportersRestored"
    case_id: str
    invalidation_id: UUID
    supporter_keys: tuple[str, ...]


CaseEvent = Annotated[
    MilestoneReached | VictoryDeclared | CaseClosed | SupportersInvalidated | SupportersRestored,
    Field(discriminator="type"),
]
AnyEvent = Annotated[
    SignatureAccepted
    | SignatureConfirmed
    | SignaturesRejected
    | SupporterErased
    | InvalidationRequested
    | InvalidationRevoked
    | CaseState
    | MilestoneReached
    | VictoryDeclared
    | CaseClosed
    | SupportersInvalidated
    | SupportersRestored,
    Field(discriminator="type"),
]

_ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
_CASE_EVENT: TypeAdapter[CaseEvent] = TypeAdapter(CaseEvent)
_SIGNATURE_LOG_EVENT: TypeAdapter[SignatureLogEvent] = TypeAdapter(SignatureLogEvent)


def decode_event(raw: bytes | str) -> AnyEvent:
    """Parse one event from JSON.  Raises ``pydantic.ValidationError`` on bad input."""
    return _ANY_EVENT.validate_json(raw)


def decode_case_event(raw: bytes | str) -> CaseEvent:
    return _CASE_EVENT.validate_json(raw)


def decode_signature(raw: bytes | str) -> SignatureAccepted:
    return SignatureAccepted.model_validate_json(raw)


def decode_signature_log_event(raw: bytes | str) -> SignatureLogEvent:
    """One record of signatures.v2.  Raises ``pydantic.ValidationError`` on bad input."""
    return _SIGNATURE_LOG_EVENT.validate_json(raw)


def decode_contact(raw: bytes | str) -> Contact:
    return Contact.model_validate_json(raw)


def decode_suppression(raw: bytes | str) -> Suppression:
    return Suppression.model_validate_json(raw)


def decode_case_state(raw: bytes | str) -> CaseState:
    return CaseState.model_validate_json(raw)


def localized(text: LocalizedText, locale: str, default_locale: str) -> str:
    """The text in ``locale``, else in the default locale, else any text there is."""
    if locale in text:
        return text[locale]
    if default_locale in text:
        return text[default_locale]
    return next(iter(text.values()), "")
