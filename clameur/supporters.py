"""Who a supporter is: one normalised email, one ``supporter_key``.

``supporter_key`` = hex HMAC-SHA256(``CLAMEUR_SECRET``, normalised email).  Intake
computes it for every signature (tally dedupes on it) and notify computes it to erase
a supporter by email: both must use exactly this normalisation, so it lives here.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re

from email_validator import EmailNotValidError, ValidatedEmail, validate_email


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
    return _checked(address).normalized.lower()


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
    return _checked(f"a@{domain}").domain


def email_domain(email: str) -> str:
    """The domain of an already normalised address."""
    return email.rpartition("@")[2]


class SupporterKeys:
    """``supporter_key`` = hex HMAC-SHA256(secret, normalised email): the dedupe key."""

    def __init__(self, secret: bytes) -> None:
        # Keying the HMAC once and copying it per email saves the key schedule per request.
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def of(self, normalised_email: str) -> str:
        mac = self._keyed.copy()
        mac.update(normalised_email.encode())
        return mac.hexdigest()
