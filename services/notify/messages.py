"""Render a milestone or a victory into an email for one supporter.  Pure: no I/O.

How a message is built, and why:

- Everything shared by the supporters of one event in one language (From, Subject,
  the MIME structure and the part headers) is built once with the standard library's
  ``EmailMessage`` API and serialised by its generator: a case title with CR/LF or an
  RFC 2047 encoded newline cannot add a header there, because titles are cleaned first
  and the stdlib folds what it is given.
- What varies per supporter is only To (``email.utils.formataddr`` over a cleaned
  name), Date, Message-ID and List-Unsubscribe (built from our own ASCII: a UUID, hex,
  a base64url token, the public URL checked at start), and the two bodies, pre-rendered
  per (event, locale) around the per-supporter values and filled in, then
  quoted-printable encoded (so no body line can start a header or match the MIME
  boundary, whose ``=`` signs QP always escapes).  Every per-supporter header line is
  checked again before use: printable ASCII, folded lines only.
- Building a whole ``EmailMessage`` per supporter costs about 3 ms of CPU (header
  parsing and refolding); this way costs a small fraction of that, which is what lets
  one process send hundreds of emails a second.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from babel import Locale, UnknownLocaleError
from babel.numbers import format_decimal
from cachetools import LRUCache
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import escape

from clameur.events import LocalizedText, MilestoneReached, VictoryDeclared
from notify.tokens import ConfirmationRequest, ConfirmationSigner, TokenSigner, UnsubscribeRequest

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
EMAIL_TEMPLATES = (
    "milestone.subject.txt",
    "milestone.txt",
    "milestone.html",
    "victory.subject.txt",
    "victory.txt",
    "victory.html",
    "confirmation.subject.txt",
    "confirmation.txt",
    "confirmation.html",
)
PAGE_TEMPLATES = (
    "unsubscribe.html",
    "unsubscribed.html",
    "invalid_link.html",
    "confirmed.html",
    "reject.html",
    "rejected.html",
    "expired_link.html",
)
FALLBACK_LOCALE = "en"
MAX_NAME_LENGTH = 80
MAX_SUBJECT_LENGTH = 200

CaseNews = MilestoneReached | VictoryDeclared
Kind = Literal["milestone", "victory", "confirmation", "reminder"]
ConfirmationKind = Literal["confirmation", "reminder"]

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BLANKS = re.compile(r"[ \t]+")
_SAFE_ASCII_VALUE = re.compile(r"^[\x20-\x7e]*$")
_PLAIN_ASCII = re.compile(r"[\x20-\x7e]*\Z")
# An RFC 5322 dot-atom addr-spec over an ASCII host name: what nearly every supporter has,
# and what ``Address`` accepts unchanged.  Anything else takes the slow, thorough path.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*\Z")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class UnsendableEmail(ValueError):
    """This message cannot be built safely (a malformed address): a permanent failure."""


def kind_of(event: CaseNews) -> Kind:
    return "milestone" if isinstance(event, MilestoneReached) else "victory"


def clean_display_text(value: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Text safe to show in a header: one line, no control characters, no encoded words.

    RFC 2047 encoded words are decoded first (the stdlib would decode them when the
    header is set, turning ``=?utf-8?q?=0D=0A?=`` into a real line break), then every
    control, surrogate, unassigned or bidi-override character and every line or
    paragraph separator becomes a space, whitespace runs collapse, and any ``=?`` left is
    broken so nothing downstream decodes it again.
    """
    if _PLAIN_ASCII.match(value) and "=?" not in value:
        # Printable ASCII holds no control, separator or bidi character: only blanks to tidy.
        return _BLANKS.sub(" ", value).strip()[:max_length].strip()
    text = value
    for _ in range(3):  # nested encodings unwrap in a few rounds; more is an attack
        if "=?" not in text:
            break
        try:
            text = str(make_header(decode_header(text)))
        except (HeaderParseError, ValueError, LookupError, UnicodeError):
            break
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp") or char in _BIDI_CONTROLS:
            kept.append(" ")
        else:
            kept.append(char)
    # Collapse ASCII blanks only: no-break spaces are meant (French "100\u202f000 !").
    cleaned = _BLANKS.sub(" ", "".join(kept)).strip().replace("=?", "= ?")
    return cleaned[:max_length].strip()


def normalise_locale(locale: str) -> str:
    """``fr_BE`` / ``FR-be`` -> ``fr-be``: the form locales are compared in."""
    return locale.strip().replace("_", "-").lower()


def negotiate_locale(wanted: str, available: Collection[str]) -> str | None:
    """The available locale for ``wanted``: exact match, else its language, else ``None``."""
    by_form = {normalise_locale(locale): locale for locale in available}
    form = normalise_locale(wanted)
    if form in by_form:
        return by_form[form]
    language = form.split("-", 1)[0]
    return by_form.get(language)


def choose_locale(supporter_locale: str, default_locale: str, available: Collection[str]) -> str:
    """The template language: the supporter's, else the case's default, else English."""
    for wanted in (supporter_locale, default_locale, FALLBACK_LOCALE):
        found = negotiate_locale(wanted, available)
        if found is not None:
            return found
    return sorted(available)[0]


def localized_text(text: LocalizedText, locale: str, default_locale: str) -> str:
    """``text`` in the supporter's locale (exact, then language), else the case's default."""
    found = negotiate_locale(locale, text.keys())
    if found is None:
        found = negotiate_locale(default_locale, text.keys())
    if found is not None:
        return text[found]
    return next(iter(text.values()), "")


def format_count(value: int, locale: str, fallback: str = FALLBACK_LOCALE) -> str:
    """``100000`` as people of ``locale`` write it: ``100\u202f000`` in French, ``100,000`` in English."""
    for candidate in (locale, fallback):
        try:
            return format_decimal(value, locale=Locale.parse(candidate.replace("-", "_")))
        except (UnknownLocaleError, ValueError):
            continue
    return str(value)


def message_id(event_id: UUID, supporter_key: str, domain: str) -> str:
    """Stable per (event, supporter): a resend after a crash carries the same Message-ID."""
    digest = hashlib.sha256(supporter_key.encode()).hexdigest()[:16]
    return f"<{event_id}.{digest}@{domain}>"


class Templates:
    """The Jinja2 templates, one folder per locale; adding a locale is adding a folder.

    A folder counts as a locale when it holds every email and page template.  HTML is
    autoescaped; text and subjects are not (they are not HTML).
    """

    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self._environment = Environment(
            loader=FileSystemLoader(str(directory)),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self.locales = frozenset(
            folder.name
            for folder in directory.iterdir()
            if folder.is_dir()
            and not folder.name.startswith("_")
            and all((folder / name).is_file() for name in (*EMAIL_TEMPLATES, *PAGE_TEMPLATES))
        )
        if FALLBACK_LOCALE not in self.locales:
            raise ValueError(f"templates in {directory} lack the fallback locale {FALLBACK_LOCALE!r}")

    def render(self, locale: str, name: str, context: Mapping[str, Any]) -> str:
        return self._environment.get_template(f"{locale}/{name}").render(context)


@dataclass(frozen=True)
class SenderIdentity:
    """Who the emails come from and where their links point."""

    address: str
    name: str
    public_url: str

    @property
    def domain(self) -> str:
        host = self.public_url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        return host.split(":", 1)[0]


@dataclass(frozen=True)
class Recipient:
    """A supporter as sending needs them."""

    supporter_key: str
    email: str
    first_name: str
    locale: str


@dataclass(frozen=True)
class OutgoingEmail:
    """A message ready for SMTP: envelope and the bytes of the message (CRLF lines)."""

    envelope_from: str
    envelope_to: str
    message_id: str
    kind: Kind
    data: bytes


# What varies per supporter inside the bodies, by the kind of email.  Templates use them as
# plain ``{{ name }}`` substitutions; a skeleton checks that (see ``_BodyTemplate.build``)
# before relying on it.
_NEWS_SLOTS = ("first_name", "unsubscribe_all_url", "unsubscribe_case_url")
_CONFIRMATION_SLOTS = ("first_name", "confirm_url", "reject_url")
_SLOT_MARK = "\u2063CLAMEURSLOT{}\u2063"  # invisible separators: no filter or escaping touches them


def _probes(slots: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    """Values a pre-rendered body must fill exactly as Jinja2 renders them: hostile, then empty."""
    hostile = {slot: f'Zo\u00e9 <&> "d\'Arc" https://probe.invalid/{slot}?x=1&y=<2>' for slot in slots}
    return hostile, dict.fromkeys(slots, "")


@dataclass(frozen=True)
class _BodyTemplate:
    """One body of one (event, locale), pre-rendered around the per-supporter slots.

    ``pieces`` alternate literal text and slot names (even indexes are text).  ``None``
    when the template does more with a slot than print it (a filter, a test): then the
    body is rendered by Jinja2 per supporter, as before.
    """

    name: str
    escape_html: bool
    pieces: tuple[str, ...] | None

    @classmethod
    def build(
        cls, templates: Templates, locale: str, name: str, context: Mapping[str, Any], slots: tuple[str, ...]
    ) -> _BodyTemplate:
        escape_html = name.endswith(".html")
        marked = templates.render(
            locale, name, {**context, **{slot: _SLOT_MARK.format(slot) for slot in slots}}
        )
        pieces: list[str] = []
        rest = marked
        while True:
            positions = [(rest.find(_SLOT_MARK.format(slot)), slot) for slot in slots]
            found = [(at, slot) for at, slot in positions if at >= 0]
            if not found:
                pieces.append(rest)
                break
            at, slot = min(found)
            pieces.extend((rest[:at], slot))
            rest = rest[at + len(_SLOT_MARK.format(slot)) :]
        body = cls(name, escape_html, tuple(pieces))
        for probe in _probes(slots):
            if body.fill(probe) != templates.render(locale, name, {**context, **probe}):
                return cls(name, escape_html, None)
        return body

    def fill(self, values: Mapping[str, str]) -> str:
        assert self.pieces is not None
        pieces = list(self.pieces)
        for index in range(1, len(pieces), 2):
            value = values[pieces[index]]
            pieces[index] = str(escape(value)) if self.escape_html else value
        return "".join(pieces)


@dataclass(frozen=True)
class _Skeleton:
    """What one email shares across its supporters of one locale (one event, or one kind of ask).

    The bytes are built once with the stdlib (``EmailMessage``, which folds and encodes
    every shared header safely); :meth:`email` adds the per-supporter header lines and
    the two bodies.
    """

    template_locale: str
    head: bytes  # shared headers through the text part's headers, ending in a blank line
    middle: bytes  # end of text part, boundary, html part headers, blank line
    tail: bytes  # end of html part, closing boundary
    context: dict[str, Any]
    text: _BodyTemplate
    html: _BodyTemplate

    @classmethod
    def build(
        cls,
        templates: Templates,
        sender: SenderIdentity,
        shared: _SharedParts,
    ) -> _Skeleton:
        message = EmailMessage(policy=policy.SMTP)
        message["From"] = Address(display_name=clean_display_text(sender.name), addr_spec=sender.address)
        message["Subject"] = clean_display_text(
            templates.render(shared.locale, f"{shared.templates}.subject.txt", shared.context),
            MAX_SUBJECT_LENGTH,
        )
        for name, value in shared.headers:
            message[name] = value
        # RFC 3834: automatic mail; keeps vacation responders quiet.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(_TEXT_MARK, cte="quoted-printable")
        message.add_alternative(_HTML_MARK, subtype="html", cte="quoted-printable")
        # After the parts exist: set_content clears every Content-* header it finds.
        message["Content-Language"] = shared.locale
        serialised = message.as_bytes(policy=policy.SMTP)
        head, rest = serialised.split(_TEXT_MARK.encode() + b"\r\n", 1)
        middle, tail = rest.split(_HTML_MARK.encode() + b"\r\n", 1)
        text, html = (
            _BodyTemplate.build(
                templates, shared.locale, f"{shared.templates}.{ext}", shared.context, shared.slots
            )
            for ext in ("txt", "html")
        )
        return cls(shared.locale, head, middle, tail, shared.context, text, html)

    def email(self, templates: Templates, headers: bytes, slots: Mapping[str, str]) -> bytes:
        """The whole message: ``headers`` (per-supporter lines), the shared ones, the filled bodies."""
        text, html = (
            body.fill(slots)
            if body.pieces is not None
            else templates.render(self.template_locale, body.name, {**self.context, **slots})
            for body in (self.text, self.html)
        )
        return b"".join((headers, self.head, _qp(text), self.middle, _qp(html), self.tail))


@dataclass(frozen=True)
class _SharedParts:
    """What a skeleton is made of: templates ``{templates}.subject.txt``, ``.txt``, ``.html``."""

    locale: str
    templates: str
    context: dict[str, Any]
    slots: tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = ()
    """Shared headers beyond From, Subject, Auto-Submitted and the MIME ones."""


_TEXT_MARK = "CLAMEURTEXTBODYMARK"
_HTML_MARK = "CLAMEURHTMLBODYMARK"


class _Skeletons:
    """Skeletons cached by what they are built from, and the Date line cached per second."""

    def __init__(self, templates: Templates, sender: SenderIdentity) -> None:
        if not _HOSTNAME.match(sender.domain):
            raise ValueError(f"the public URL's host {sender.domain!r} is not a usable domain")
        if not _SAFE_ASCII_VALUE.match(sender.public_url) or any(c in sender.public_url for c in " <>\"'"):
            raise ValueError("the public URL must be printable ASCII without spaces, quotes or <>")
        Address(addr_spec=sender.address)  # raises on a malformed sender address
        self.templates = templates
        self.sender = sender
        self._cache: LRUCache[tuple[object, ...], _Skeleton] = LRUCache(maxsize=256)
        self._date: tuple[int, bytes] = (-1, b"")

    def get(self, cache_key: tuple[object, ...], shared: Callable[[], _SharedParts]) -> _Skeleton:
        found = self._cache.get(cache_key)
        if found is None:
            found = _Skeleton.build(self.templates, self.sender, shared())
            self._cache[cache_key] = found
        return found

    def date_line(self, now: datetime) -> bytes:
        """The Date header; built once per second (it has a resolution of one second)."""
        second = int(now.timestamp())
        if self._date[0] != second:
            self._date = (second, _header_line("Date", format_datetime(now.astimezone(UTC), usegmt=True)))
        return self._date[1]


class MessageRenderer:
    """Turns (case news, supporter) into an :class:`OutgoingEmail`.

    Pure apart from a small cache of per-(event, locale) skeletons.  Raises
    :class:`UnsendableEmail` when the supporter's address cannot be written safely.
    """

    def __init__(self, templates: Templates, sender: SenderIdentity, signer: TokenSigner) -> None:
        self._skeletons = _Skeletons(templates, sender)
        self.templates = templates
        self.sender = sender
        self.signer = signer

    def unsubscribe_url(self, request: UnsubscribeRequest) -> str:
        return f"{self.sender.public_url}/v1/unsubscribe/{self.signer.sign(request)}"

    def render(self, event: CaseNews, recipient: Recipient, now: datetime) -> OutgoingEmail:
        skeleton = self._skeletons.get(
            (event.event_id, normalise_locale(recipient.locale)),
            lambda: self._shared(event, recipient.locale),
        )
        envelope_to = _ascii_address(recipient.email)
        all_cases = UnsubscribeRequest(recipient.supporter_key, None, skeleton.template_locale)
        this_case = UnsubscribeRequest(recipient.supporter_key, event.case_id, skeleton.template_locale)
        one_click = self.unsubscribe_url(all_cases)
        first_name = clean_display_text(recipient.first_name)
        slots = {
            "first_name": first_name,
            "unsubscribe_all_url": one_click,
            "unsubscribe_case_url": self.unsubscribe_url(this_case),
        }
        identifier = message_id(event.event_id, recipient.supporter_key, self.sender.domain)
        headers = b"".join(
            (
                _header_line("To", formataddr((first_name, envelope_to))),
                self._skeletons.date_line(now),
                _header_line("Message-ID", identifier),
                _header_line("List-Unsubscribe", f"<{one_click}>"),
            )
        )
        data = skeleton.email(self.templates, headers, slots)
        return OutgoingEmail(self.sender.address, envelope_to, identifier, kind_of(event), data)

    def _shared(self, event: CaseNews, supporter_locale: str) -> _SharedParts:
        locale = choose_locale(supporter_locale, event.default_locale, self.templates.locales)
        # Numbers follow the supporter's own locale when Babel knows it (fr-CH differs
        # from fr), else the template's.
        number_locale = supporter_locale if _babel_knows(supporter_locale) else locale
        context: dict[str, Any] = {
            "locale": locale,
            "case_id": event.case_id,
            "case_title": clean_display_text(
                localized_text(event.case_title, supporter_locale, event.default_locale), MAX_SUBJECT_LENGTH
            ),
            "total": format_count(event.total, number_locale),
            "public_url": self.sender.public_url,
        }
        if isinstance(event, MilestoneReached):
            context["threshold"] = format_count(event.threshold, number_locale)
        else:
            context["headline"] = localized_text(event.headline, supporter_locale, event.default_locale)
            context["message"] = localized_text(event.message, supporter_locale, event.default_locale)
        headers = (("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),)
        return _SharedParts(locale, kind_of(event), context, _NEWS_SLOTS, headers)


class ConfirmationRenderer:
    """Turns (confirmation or reminder, case, supporter) into an :class:`OutgoingEmail`.

    The body holds two links, the token in the path (mail scanners strip query strings):
    ``{public_url}/v1/confirm/{token}`` and ``{public_url}/v1/reject/{token}``, each valid
    ``expiry_s`` from ``now``.  Built like news (a skeleton per kind and locale, the
    per-supporter headers and bodies filled in): a surge asks a thousand supporters a
    second.  No List-Unsubscribe: there is no list yet, and "It wasn't me" is the way out.
    Raises :class:`UnsendableEmail` when the address cannot be written safely.
    """

    def __init__(
        self, templates: Templates, sender: SenderIdentity, signer: ConfirmationSigner, expiry_s: float
    ) -> None:
        self._skeletons = _Skeletons(templates, sender)
        self.templates = templates
        self.sender = sender
        self.signer = signer
        self.expiry_s = expiry_s

    def link(self, request: ConfirmationRequest) -> str:
        return f"{self.sender.public_url}/v1/{request.action}/{self.signer.sign(request)}"

    def render(
        self,
        kind: ConfirmationKind,
        case_id: str,
        recipient: Recipient,
        now: datetime,
        *,
        news_only: bool = False,
    ) -> OutgoingEmail:
        """``news_only``: the signature already counts (a ``"none"`` case); ask only about news."""
        skeleton = self._skeletons.get(
            (kind, news_only, normalise_locale(recipient.locale)),
            lambda: self._shared(kind, recipient.locale, news_only=news_only),
        )
        locale = skeleton.template_locale
        expires_at = int(now.timestamp() + self.expiry_s)
        key = recipient.supporter_key
        first_name = clean_display_text(recipient.first_name)
        slots = {
            "first_name": first_name,
            "confirm_url": self.link(ConfirmationRequest("confirm", key, case_id, locale, expires_at)),
            "reject_url": self.link(ConfirmationRequest("reject", key, case_id, locale, expires_at)),
        }
        envelope_to = _ascii_address(recipient.email)
        identifier = message_id(_confirmation_id(kind, case_id), key, self.sender.domain)
        headers = b"".join(
            (
                _header_line("To", formataddr((first_name, envelope_to))),
                self._skeletons.date_line(now),
                _header_line("Message-ID", identifier),
            )
        )
        data = skeleton.email(self.templates, headers, slots)
        return OutgoingEmail(self.sender.address, envelope_to, identifier, kind, data)

    def _shared(self, kind: ConfirmationKind, supporter_locale: str, *, news_only: bool) -> _SharedParts:
        locale = choose_locale(supporter_locale, FALLBACK_LOCALE, self.templates.locales)
        context = {
            "locale": locale,
            "reminder": kind == "reminder",
            "news_only": news_only,
            "expiry_days": max(1, round(self.expiry_s / 86400)),
        }
        return _SharedParts(locale, "confirmation", context, _CONFIRMATION_SLOTS)


def _confirmation_id(kind: str, case_id: str) -> UUID:
    """Stable per (kind, case): with the supporter's digest, a stable Message-ID."""
    return UUID(hashlib.md5(f"clameur.{kind}|{case_id}".encode(), usedforsecurity=False).hexdigest())


def _babel_knows(locale: str) -> bool:
    try:
        Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return False
    return True


def _ascii_address(address: str) -> str:
    """The address as SMTP will carry it (IDN domain as punycode), or :class:`UnsendableEmail`."""
    address = address.strip()
    if _PLAIN_ADDRESS.match(address):
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise UnsendableEmail("the supporter's address has no domain")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise UnsendableEmail("the supporter's address has a malformed domain") from error
    candidate = f"{local}@{ascii_domain}"
    if not _SAFE_ASCII_VALUE.match(candidate) or any(c in candidate for c in ' <>,;"\\()[]'):
        # A non-ASCII local part needs SMTPUTF8, which this sender does not speak.
        raise UnsendableEmail("the supporter's address cannot be sent to without SMTPUTF8")
    try:
        Address(addr_spec=candidate)
    except (ValueError, IndexError, HeaderParseError) as error:
        raise UnsendableEmail("the supporter's address is malformed") from error
    return candidate


def _header_line(name: str, value: str) -> bytes:
    """``Name: value`` CRLF, refusing anything but printable ASCII and folded lines."""
    lines = value.split("\n")
    for index, line in enumerate(lines):
        if not _SAFE_ASCII_VALUE.match(line) or (index > 0 and not line.startswith((" ", "\t"))):
            raise UnsendableEmail(f"the {name} header would not be a single safe header")
    return (f"{name}: " + "\r\n".join(lines) + "\r\n").encode("ascii")


def _qp(body: str) -> bytes:
    """A body as quoted-printable with CRLF line ends, ending with a line break."""
    normalised = body.replace("\r\n", "\n").replace("\r", "\n")
    if not normalised.endswith("\n"):
        normalised += "\n"
    encoded = binascii.b2a_qp(normalised.encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")
