"""The optional human check: a Cloudflare Turnstile token verified server-side.

Off unless ``CLAMEUR_TURNSTILE_SECRET`` is set.  The widget puts the token Turnstile gave
it in the body's ``turnstile_token``; intake posts it to the siteverify URL with the
secret and the client's IP, and refuses the signature (403) unless Cloudflare says
``success``.  If siteverify cannot be reached in time, the request gets a 503 with
``Retry-After``: failing closed, since the operators turned the check on for a reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import httpx

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HumanCheckResult:
    passed: bool
    reachable: bool = True
    errors: tuple[str, ...] = ()


class HumanCheck(Protocol):
    async def verify(self, token: str | None, client_ip: str) -> HumanCheckResult: ...


class TurnstileCheck:
    """Turnstile's siteverify over HTTP (``client`` is built and closed by the app)."""

    def __init__(self, client: httpx.AsyncClient, *, secret: str, verify_url: str, timeout: float) -> None:
        self._client = client
        self._secret = secret
        self._url = verify_url
        self._timeout = timeout

    async def verify(self, token: str | None, client_ip: str) -> HumanCheckResult:
        if not token:
            return HumanCheckResult(False, errors=("missing-input-response",))
        form = {"secret": self._secret, "response": token}
        if client_ip != "unknown":
            form["remoteip"] = client_ip
        try:
            answer = await self._client.post(self._url, data=form, timeout=self._timeout)
            answer.raise_for_status()
            verdict = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("turnstile siteverify unreachable: %s", type(exc).__name__)
            return HumanCheckResult(False, reachable=False)
        if not isinstance(verdict, dict):
            return HumanCheckResult(False, reachable=False)
        codes = verdict.get("error-codes") or []
        return HumanCheckResult(verdict.get("success") is True, errors=tuple(str(code) for code in codes))
