"""From a widget's (or a partner's) JSON body to a :class:`SignatureAccepted` event.

Pure and synchronous: no I/O, no clock of its own (the time of receipt is passed in),
so every rule here is unit-tested without a broker.

The rules, and why:

- names are 1 to 100 characters once trimmed, hold no control character (also not
  percent- or entity-encoded, the way header-injection payloads arrive), no bidi
  override and no URL: a name is printed in letters to authorities and in emails;
- the email is checked by email-validator (syntax only: no DNS at surge rates) and
  kept as typed (trimmed) to write to; its canonical form (:func:`canonical_email`,
  computed once per request) makes the supporter key, so ``Nawal@X.org `` and
  ``nawal@x.org``, or ``a.b.c@gmail.com`` and ``abc+1@googlemail.com``, are one supporter;
- what is published is minimal: the signature (signatures.v2, kept forever) carries no
  name, email, postal code or referrer, and its page URL loses its query string and
  fragment; the address and first name go, as a :class:`Contact` on the compacted
  contacts.v1, only when notify will write (a confirmation case, or consent to updates);
  ``last_name`` and ``postal_code`` are checked (the public contract) and published nowhere;
- the country is a real ISO 3166-1 alpha-2 code (pycountry), given in any case;
- locale and action must be among the case's (checked against the case's state);
- unknown fields are refused, so a typo in a widget shows up at once.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pycountry
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from clameur.events import Action, CaseState, Consent, Contact, SignatureAccepted, SignatureSource
from clameur.supporters import SupporterKeys, canonical_email, email_domain
from clameur.web import field_errors

NAME_MAX = 100

COUNTRY_CODES = frozenset(country.alpha_2 for country in pycountry.countries)
"""Every ISO 3166-1 alpha-2 code pycountry knows (a constant, read once)."""

# C0 and C1 controls (newlines, NUL, DEL...), plus bidi controls and line/paragraph
# separators: not Cc, but they rewrite or break what a name looks like when printed.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_URL = re.compile(
    r"[a-z][a-z0-9+.\-]*://|\bwww\.|"
    r"\b[a-z0-9\-]+\.(?:com|net|org|info|biz|io|co|ru|cn|xyz|top|online|site|click|link|ly|me|app|shop)\b",
    re.IGNORECASE,
)


SIGNATURE_MESSAGES = {
    "json_invalid": "the body is not valid JSON",
    "extra_forbidden": "is not a field of a signature",
}
"""Pydantic's words replaced, by error type, in a signature's ``errors``."""


class InvalidSignature(Exception):
    """The body cannot become a signature; ``errors`` are ``{"field", "message"}`` pairs."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{error['field']}: {error['message']}" for error in errors))
        self.errors = errors


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character, raw or percent/entity-encoded."""
    if _has_raw_control(text):
        return True
    # Decode only when there is something to decode: the common name costs nothing.
    if "%" in text and _has_raw_control(unquote(text)):
        return True
    return "&" in text and _has_raw_control(html.unescape(text))


def _has_raw_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def _person_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters")
    if has_control_characters(name):
        raise ValueError("must not contain control characters or line breaks")
    if _URL.search(name):
        raise ValueError("must not contain a web address")
    if unicodedata.category(name[0]) in ("Cf", "Cs", "Co", "Cn"):
        raise ValueError("must start with a visible character")
    return name


def _plain_text(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain control characters or line breaks")
    return value.strip()


class TypedEmail(str):
    """An address as the supporter typed it (trimmed), carrying its canonical form.

    The validation computes the canonical form once (it is also the check of the
    address) and the event needs it again for the supporter key and the email domain:
    carried here, it is not computed twice per request.
    """

    canonical: str

    def __new__(cls, typed: str, canonical: str) -> TypedEmail:
        email = super().__new__(cls, typed)
        email.canonical = canonical
        return email


PersonName = Annotated[str, Field(min_length=1, max_length=NAME_MAX * 2), AfterValidator(_person_name)]
PlainText = Annotated[str, AfterValidator(_plain_text)]


class ConsentForm(BaseModel):
    """What the supporter agreed to; ``updates``: emails about this case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    updates: bool = False


class SourceForm(BaseModel):
    """Where the widget was shown; free text the campaign uses for its own statistics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    widget: Annotated[PlainText, Field(max_length=100)] | None = None
    page_url: Annotated[PlainText, Field(max_length=2048)] | None = None
    referrer: Annotated[PlainText, Field(max_length=2048)] | None = None


class SignatureFields(BaseModel):
    """The fields of one supporter's action, shared by the widget and the bulk import."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)

    first_name: PersonName
    last_name: PersonName
    email: Annotated[str, Field(min_length=3, max_length=320)]
    country: Annotated[str, Field(min_length=2, max_length=2, examples=["FR"])]
    postal_code: Annotated[PlainText, Field(max_length=20)] | None = None
    locale: (
        Annotated[str, Field(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")]
        | None
    ) = None
    action: Action = Action.SIGNATURE
    consent: ConsentForm = ConsentForm()
    source: SourceForm | None = None

    @property
    def canonical_email(self) -> str:
        """The address in the one form its supporter key is computed from."""
        email = self.email
        if isinstance(email, TypedEmail):
            return email.canonical
        return canonical_email(email)  # built without validation (model_construct)

    @field_validator("country")
    @classmethod
    def _real_country(cls, value: str) -> str:
        code = value.upper()
        if code not in COUNTRY_CODES:
            raise ValueError("must be an ISO 3166-1 alpha-2 country code, such as FR or GB")
        return code

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        # canonical_email checks the address (ValueError: a field error) on the way.
        return TypedEmail(value.strip(), canonical_email(value))


class SignatureForm(SignatureFields):
    """A widget's body: the action plus the bot trap and the optional human-check token.

    ``website`` is a honeypot: the widget hides it from people, so only bots fill it.
    """

    website: Annotated[str, Field(max_length=2048)] | None = None
    turnstile_token: Annotated[str, Field(max_length=2048)] | None = None

    @property
    def is_bot(self) -> bool:
        return bool(self.website)


class SignatureBatch(BaseModel):
    """A partner's bulk import: up to ``batch_max_items`` signatures, each judged alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signatures: list[Any] = Field(min_length=1)


def parse_form(body: bytes) -> SignatureForm:
    """Parse and check a widget body.  Raises :class:`InvalidSignature`."""
    try:
        return SignatureForm.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidSignature(field_errors(exc, messages=SIGNATURE_MESSAGES)) from None


def parse_fields(raw: Any) -> SignatureFields:
    """Check one bulk item (already decoded JSON).  Raises :class:`InvalidSignature`."""
    try:
        return SignatureFields.model_validate(raw)
    except ValidationError as exc:
        raise InvalidSignature(field_errors(exc, messages=SIGNATURE_MESSAGES)) from None


@dataclass(frozen=True)
class Receipt:
    """What the request adds to the fields: where and when it was received."""

    case: CaseState
    received_at: datetime
    partner: str | None = None


@dataclass(frozen=True, slots=True)
class Acceptance:
    """What accepting one action publishes: the signature, and the contact when one is needed.

    ``contact`` is set when notify will write to the supporter: the case asks for the
    address to be confirmed, or the supporter asked for news of the case.
    """

    signature: SignatureAccepted
    contact: Contact | None

    @property
    def status(self) -> str:
        """The 202 answer's ``status``: the signature counts now, or once confirmed."""
        return PENDING_CONFIRMATION if self.signature.awaits_confirmation else ACCEPTED


ACCEPTED = "accepted"
PENDING_CONFIRMATION = "pending_confirmation"


def accept_signature(fields: SignatureFields, receipt: Receipt, keys: SupporterKeys) -> Acceptance:
    """The records of ``fields`` on ``receipt.case``.  Raises :class:`InvalidSignature`.

    The signature holds no personal data (only the supporter key and the email domain);
    the contact (the address as typed, first name, locale) is made only when needed.
    """
    case = receipt.case
    locale = fields.locale or case.default_locale
    _check_case_fits(fields, locale, case)
    canonical = fields.canonical_email
    supporter_key = keys.of(canonical)
    awaits_confirmation = case.confirmation == "email"
    updates = fields.consent.updates
    source = fields.source
    signature = SignatureAccepted(
        case_id=case.case_id,
        action=fields.action,
        country=fields.country,
        locale=locale,
        supporter_key=supporter_key,
        email_domain=email_domain(canonical),
        consent=_CONSENTED if updates else _NOT_CONSENTED,
        awaits_confirmation=awaits_confirmation,
        source=SignatureSource(
            widget=source.widget if source else None,
            page_url=page_without_query(source.page_url) if source and source.page_url else None,
            partner=receipt.partner,
        ),
        received_at=receipt.received_at,
        occurred_at=receipt.received_at,
    )
    contact = None
    if awaits_confirmation or updates:
        contact = Contact(
            supporter_key=supporter_key,
            email=fields.email,
            first_name=fields.first_name,
            locale=locale,
            recorded_at=receipt.received_at,
        )
    return Acceptance(signature, contact)


def _check_case_fits(fields: SignatureFields, locale: str, case: CaseState) -> None:
    errors = []
    if locale not in case.locales:
        errors.append(
            {"field": "locale", "message": f"this case speaks {', '.join(case.locales)}, not {locale}"}
        )
    if fields.action not in case.actions:
        errors.append(
            {
                "field": "action",
                "message": f"this case takes {', '.join(case.actions)}, not {fields.action.value}",
            }
        )
    if errors:
        raise InvalidSignature(errors)


def page_without_query(url: str) -> str:
    """``url`` without its query string, fragment or credentials: they can carry a tracking id
    or a person's details (``?email=...``, ``https://name:secret@host/``), and are kept forever."""
    if "?" not in url and "#" not in url and "@" not in url:
        return url  # the common page URL: nothing to take out, no parsing
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not a URL urllib can parse (a broken IPv6 host): cut by hand, as urlsplit would.
        return url.partition("#")[0].partition("?")[0]
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


# Frozen, so every event may share them.
_CONSENTED = Consent(updates=True)
_NOT_CONSENTED = Consent(updates=False)
