"""Who a supporter is: one canonical email, one ``supporter_key``.

``supporter_key`` = hex HMAC-SHA256(the ``supporter`` key derived from ``CLAMEUR_SECRET``,
canonical email).  Intake computes it for every signature (tally dedupes on it), notify
computes it to confirm, erase or suppress a supporter by email: all must use exactly this
canonical form, so it lives here.

The canonical form is what makes one person one signature: the address trimmed,
lowercased and Unicode-normalised (NFC), its domain in IDNA (A-label) form, then the
provider's own equivalences from ``email_providers.json`` (data, not code): at Gmail dots
and a ``+tag`` do not matter and googlemail.com is gmail.com; at the providers that
deliver sub-addresses a ``+tag`` (Yahoo: a ``-keyword``) is dropped.  The address used
to send mail stays as the supporter typed it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from clameur.keys import Purpose, derive_key


def normalise_email(value: str) -> str:
    """The address trimmed, checked (syntax only) and lowercased: one supporter, one form.

    Raises ``ValueError`` with a readable reason (pydantic turns it into a field error).

    Speed: email-validator spends most of its ~100 µs per address on the domain (IDNA
    and special-use checks), yet a surge's addresses share a few thousand domains.  So
    a plain ASCII local part (RFC 5322 dot-atom, which email-validator accepts as is) is
    checked here and the domain's verdict is remembered; anything else, and every domain
    seen first, goes through email-validator whole.  Both paths give the same answer
    (tests/intake/test_validation.py holds them side by side).
    """
    address = value.strip()
    local, at, domain = address.rpartition("@")
    if at and len(address) <= _MAX_ADDRESS and len(local) <= _MAX_LOCAL and _DOT_ATOM.match(local):
        return f"{local}@{_checked_domain(domain.lower())}".lower()
    checked = _checked(address)
    return f"{unicodedata.normalize('NFC', checked.local_part)}@{checked.ascii_domain}".lower()


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_MAX_ADDRESS = 254
_MAX_LOCAL = 64


def _checked(address: str) -> ValidatedEmail:
    try:
        return validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address ({exc})") from None


@functools.lru_cache(maxsize=8192)
def _checked_domain(domain: str) -> str:
    # A pure function's memo (bounded); an invalid domain raises and is not remembered.
    # The ASCII (IDNA A-label) form: bücher.example and xn--bcher-kva.example are one domain.
    return _checked(f"a@{domain}").ascii_domain


@dataclass(frozen=True)
class Provider:
    """One mailbox namespace of a mail provider, as ``email_providers.json`` describes it."""

    name: str
    domains: tuple[str, ...]
    ignore_dots: bool
    tag_separators: tuple[str, ...]

    @property
    def canonical_domain(self) -> str:
        return self.domains[0]

    def mailbox(self, local: str) -> str:
        """The local part with the provider's equivalences applied."""
        for separator in self.tag_separators:
            base, found, _tag = local.partition(separator)
            if found and base:
                local = base
        if self.ignore_dots:
            local = local.replace(".", "")
        return local


PROVIDERS_FILE = Path(__file__).with_name("email_providers.json")


def load_providers(path: Path = PROVIDERS_FILE) -> dict[str, Provider]:
    """Each domain of the table to its provider."""
    table = json.loads(path.read_text())
    by_domain: dict[str, Provider] = {}
    for entry in table["providers"]:
        provider = Provider(
            name=entry["name"],
            domains=tuple(domain.lower() for domain in entry["domains"]),
            ignore_dots=bool(entry["ignore_dots"]),
            tag_separators=tuple(entry["tag_separators"]),
        )
        for domain in provider.domains:
            if domain in by_domain:
                raise ValueError(f"{path.name}: {domain} is listed twice")
            by_domain[domain] = provider
    return by_domain


_PROVIDERS = load_providers()


def canonical_email(value: str) -> str:
    """The one form of a supporter's address that their supporter key is computed from.

    :func:`normalise_email` (trimmed, checked, lowercased, NFC, IDNA domain), then the
    provider's equivalences.  Raises ``ValueError`` like :func:`normalise_email`.
    """
    normalised = normalise_email(value)
    local, _, domain = normalised.rpartition("@")
    provider = _PROVIDERS.get(domain)
    if provider is None:
        return normalised
    return f"{provider.mailbox(local)}@{provider.canonical_domain}"


def email_domain(email: str) -> str:
    """The domain of an already normalised address."""
    return email.rpartition("@")[2]


class SupporterKeys:
    """``supporter_key`` = hex HMAC-SHA256(key, canonical email): the dedupe key.

    Built from the master secret with :meth:`from_master` (the derived ``supporter`` key);
    the suppression hashes use the same construction under the ``suppression`` key.
    """

    def __init__(self, key: bytes) -> None:
        # Keying the HMAC once and copying it per email saves the key schedule per request.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def from_master(cls, master: str | bytes, purpose: Purpose = Purpose.SUPPORTER) -> SupporterKeys:
        return cls(derive_key(master, purpose))

    def of(self, canonical: str) -> str:
        """The key of an address already in canonical form (:func:`canonical_email`)."""
        mac = self._keyed.copy()
        mac.update(canonical.encode())
        return mac.hexdigest()

    def of_address(self, address: str) -> str:
        """The key of an address as typed.  Raises ``ValueError`` when it is not one."""
        return self.of(canonical_email(address))
