"""Signed tokens in links: unsubscribe (RFC 8058), and confirm / reject a signature.

Unsubscribe: the token carries the supporter key (an HMAC, not the email), an optional case id and
the locale for the confirmation page, signed with ``CLAMEUR_SECRET`` under a salt of
its own so it can never be confused with another signed value.  Tokens do not expire:
an unsubscribe link in a months-old email must still work.

Confirm and reject ("It wasn't me"): :class:`ConfirmationSigner`, under the ``token`` key
derived from ``CLAMEUR_SECRET`` (``clameur.keys``), a token scoped to one supporter and
one case, with its action (a confirm token never rejects) and an expiry (30 days by
default): the link goes in the URL's path, where mail scanners leave it whole.

Rotation: both signers take the signing secret and then the previous ones, newest
first (``CLAMEUR_TOKEN_SECRETS``, docs/operations.md "Rotating the token key").  The
first signs; every one verifies, so a link already sent keeps working until its secret
is removed from the list.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_encode

from clameur.keys import Purpose, derive_key

SALT = "clameur.notify.unsubscribe.v1"
CONFIRMATION_SALT = "clameur.notify.confirmation.v1"

ConfirmationAction = Literal["confirm", "reject"]

UnsubscribeScope = Literal["all", "case"]


class InvalidToken(ValueError):
    """The token was not made by us, or was altered."""


class ExpiredToken(InvalidToken):
    """The token is ours and whole, but its time is over: ``request`` says what it asked."""

    def __init__(self, request: ConfirmationRequest) -> None:
        super().__init__("the link has expired")
        self.request = request


@dataclass(frozen=True)
class UnsubscribeRequest:
    """What a valid token asks: stop news about ``case_id``, or about everything when ``None``."""

    supporter_key: str
    case_id: str | None
    locale: str

    @property
    def scope(self) -> UnsubscribeScope:
        return "all" if self.case_id is None else "case"


class TokenSigner:
    """Makes and checks unsubscribe tokens; one instance per app, built from the secret."""

    def __init__(self, secret: str, *previous: str) -> None:
        """``secret`` signs; it and each of ``previous`` (newest first) verify."""
        # itsdangerous takes its keys oldest first and signs with the last one.
        self._serializer = URLSafeSerializer([*reversed(previous), secret], salt=SALT)
        # Every email carries two tokens: sign with the serializer's own derived key and
        # HMAC, made once, instead of building a signer (and deriving the key) per token.
        signer = self._serializer.make_signer()
        self._mac = hmac.new(signer.derive_key(), digestmod=hashlib.sha1)
        self._separator = signer.sep

    def sign(self, request: UnsubscribeRequest) -> str:
        """A token ``URLSafeSerializer.loads`` accepts: compact JSON, base64url, HMAC-SHA1.

        Never compressed (the payload is a short key and two codes): the serializer reads
        compressed and uncompressed payloads alike.
        """
        payload: dict[str, str] = {"s": request.supporter_key, "l": request.locale}
        if request.case_id is not None:
            payload["c"] = request.case_id
        value = base64_encode(json.dumps(payload, separators=(",", ":")).encode())
        mac = self._mac.copy()
        mac.update(value)
        return (value + self._separator + base64_encode(mac.digest())).decode("ascii")

    def verify(self, token: str) -> UnsubscribeRequest:
        """The request a token carries.  Raises :class:`InvalidToken` if forged or altered."""
        try:
            payload = self._serializer.loads(token)
        except BadSignature as error:
            raise InvalidToken("the unsubscribe token's signature does not match") from error
        if not isinstance(payload, dict):
            raise InvalidToken("the unsubscribe token holds no request")
        key, case_id, locale = payload.get("s"), payload.get("c"), payload.get("l", "en")
        if not isinstance(key, str) or not key:
            raise InvalidToken("the unsubscribe token names no supporter")
        if case_id is not None and not isinstance(case_id, str):
            raise InvalidToken("the unsubscribe token's case is malformed")
        if not isinstance(locale, str):
            locale = "en"
        return UnsubscribeRequest(supporter_key=key, case_id=case_id, locale=locale)


@dataclass(frozen=True)
class ConfirmationRequest:
    """What a confirm or reject link asks, about one supporter's signatures of one case."""

    action: ConfirmationAction
    supporter_key: str
    case_id: str
    locale: str
    expires_at: int
    """Unix seconds."""


class ConfirmationSigner:
    """Makes and checks confirm / reject tokens under the derived ``token`` key."""

    def __init__(self, secret: str, *previous: str) -> None:
        """``secret`` signs; it and each of ``previous`` (newest first) verify."""
        keys = [derive_key(master, Purpose.TOKEN) for master in (*reversed(previous), secret)]
        self._serializer = URLSafeSerializer(keys, salt=CONFIRMATION_SALT)

    def sign(self, request: ConfirmationRequest) -> str:
        payload = {
            "a": request.action,
            "s": request.supporter_key,
            "c": request.case_id,
            "l": request.locale,
            "x": request.expires_at,
        }
        return str(self._serializer.dumps(payload))

    def verify(self, token: str, action: ConfirmationAction, now: datetime) -> ConfirmationRequest:
        """The request a token carries, for ``action``.

        Raises :class:`ExpiredToken` after its expiry, :class:`InvalidToken` when it is
        forged, altered, or made for the other action.
        """
        try:
            payload = self._serializer.loads(token)
        except BadSignature as error:
            raise InvalidToken("the link's signature does not match") from error
        if not isinstance(payload, dict) or payload.get("a") != action:
            raise InvalidToken("the link is not a link to this action")
        key, case_id, locale, expires_at = (payload.get(name) for name in ("s", "c", "l", "x"))
        if not (isinstance(key, str) and key and isinstance(case_id, str) and case_id):
            raise InvalidToken("the link names no supporter or no case")
        if not isinstance(expires_at, int):
            raise InvalidToken("the link has no expiry")
        request = ConfirmationRequest(
            action, key, case_id, locale if isinstance(locale, str) else "en", expires_at
        )
        if now.timestamp() >= expires_at:
            raise ExpiredToken(request)
        return request
