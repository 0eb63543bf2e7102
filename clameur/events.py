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
    """Where a signature came from; every field is optional and free text."""

    widget: str | None = None
    page_url: str | None = None
    referrer: str | None = None
    partner: str | None = None


class SignatureAccepted(Event):
    """Intake accepted one action of one supporter for one case (key: case id).

    ``supporter_key`` is HMAC-SHA256(secret, normalised email) in hex: the dedupe key.
    ``email`` is present only when ``consent.updates`` is true.
    """

    type: Literal["SignatureAccepted"] = "SignatureAccepted"
    signature_id: UUID = Field(default_factory=uuid4)
    case_id: str
    action: Action = Action.SIGNATURE
    first_name: str
    last_name: str
    country: str
    postal_code: str | None = None
    locale: str
    supporter_key: str
    email: str | None = None
    consent: Consent = Consent()
    source: SignatureSource = SignatureSource()
    received_at: AwareDatetime = Field(default_factory=utc_now)


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


CaseEvent = Annotated[MilestoneReached | VictoryDeclared | CaseClosed, Field(discriminator="type")]
AnyEvent = Annotated[
    SignatureAccepted | CaseState | MilestoneReached | VictoryDeclared | CaseClosed,
    Field(discriminator="type"),
]

_ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
_CASE_EVENT: TypeAdapter[CaseEvent] = TypeAdapter(CaseEvent)


def decode_event(raw: bytes | str) -> AnyEvent:
    """Parse one event from JSON.  Raises ``pydantic.ValidationError`` on bad input."""
    return _ANY_EVENT.validate_json(raw)


def decode_case_event(raw: bytes | str) -> CaseEvent:
    return _CASE_EVENT.validate_json(raw)


def decode_signature(raw: bytes | str) -> SignatureAccepted:
    return SignatureAccepted.model_validate_json(raw)


def decode_case_state(raw: bytes | str) -> CaseState:
    return CaseState.model_validate_json(raw)


def localized(text: LocalizedText, locale: str, default_locale: str) -> str:
    """The text in ``locale``, else in the default locale, else any text there is."""
    if locale in text:
        return text[locale]
    if default_locale in text:
        return text[default_locale]
    return next(iter(text.values()), "")
