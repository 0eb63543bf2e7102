"""The operators' door: who may pass (the admin token), and a record of what they did.

Every admin action (a case created or changed, a victory, a close, an erasure, an
invalidation or its revocation) is one log line, ``admin action``, with the action,
its target (a case id, an invalidation id, an erasure id), the token's name and the
time, and is counted in ``clameur_admin_actions_total{service,action}``.  Never personal
data: an erasure is logged by its erasure id, never by the email it was asked for.

A failed authentication is counted (``clameur_admin_auth_failures_total{service}``) and
costs its client IP a token of a bucket (:mod:`clameur.buckets`): after a burst of
failures the IP is answered 429 with ``Retry-After`` before its token is even looked
at, so guessing goes no faster than the refill, and a right guess cannot be told from a
wrong one while it waits.  The client IP is the socket peer: the admin API is meant for
operators inside the network, not behind the public proxies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter

from clameur.buckets import Clock, RateLimit, TokenBuckets, retry_after
from clameur.web import Problem, bearer_token, token_matches

ADMIN_TOKEN_NAME = "admin"  # noqa: S105 - a name, not a secret
"""The name of the one admin token there is today (``CLAMEUR_ADMIN_TOKEN``)."""

FAILED_AUTHENTICATIONS = RateLimit(burst=10, per_second=0.1)
"""Ten wrong tokens at once, then one every ten seconds, per client IP."""

logger = logging.getLogger("clameur.admin")


class AdminDoor:
    """A service's admin door: the guard on its admin routes, and the audit of what passes.

    One per app (its counters live in the app's registry); every admin router of the
    app shares it.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        token: str,
        actions: Iterable[str],
        *,
        failures: RateLimit = FAILED_AUTHENTICATIONS,
        clock: Clock = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.service = service
        self._token = token
        self.actions = Counter(
            "clameur_admin_actions", "Admin actions done.", ["service", "action"], registry=registry
        )
        self.auth_failures = Counter(
            "clameur_admin_auth_failures",
            "Admin requests refused for a missing or wrong token.",
            ["service"],
            registry=registry,
        )
        # Every series from zero, so that a rate over them is right from the first one.
        for action in actions:
            self.actions.labels(service, action)
        self.auth_failures.labels(service)
        self._failures = TokenBuckets(failures, clock=clock, max_keys=max_clients)

    def record(self, action: str, target: str, *, by: str = ADMIN_TOKEN_NAME, **ids: str) -> None:
        """Log and count one admin action done; ``ids`` are more ids (``case_id``), never personal data."""
        self.actions.labels(self.service, action).inc()
        logger.info(
            "admin action",
            extra={
                "action": action,
                "target": target,
                "token_name": by,
                "at": datetime.now(UTC).isoformat(),
                **ids,
            },
        )

    def guard(self, *, realm: str = "clameur-admin") -> Callable[[Request], Awaitable[None]]:
        """A route dependency that lets a request through only with ``Authorization: Bearer <token>``.

        A missing or wrong token gets the same answer (401 with ``WWW-Authenticate``, RFC
        6750), so a caller learns nothing about which it was; an IP past its burst of
        failures gets 429 with ``Retry-After``, whatever token it sends.
        """

        async def require_admin(request: Request) -> None:
            client = request.client.host if request.client else "unknown"
            wait = self._failures.wait(client)
            if wait:
                raise Problem(
                    429,
                    "Too many requests with a wrong admin token from this address: "
                    f"wait {retry_after(wait)} s, then send the right one.",
                    headers={"Retry-After": retry_after(wait)},
                )
            if token_matches(bearer_token(request.headers.get("authorization")), self._token):
                return
            self.auth_failures.labels(self.service).inc()
            self._failures.take(client)
            # Not the address: an IP is personal data, and the counter is what alerts.
            logger.warning("admin authentication failed")
            raise Problem(
                401,
                "This is the operators' API: send the admin token as `Authorization: Bearer <token>`"
                " (CLAMEUR_ADMIN_TOKEN).",
                headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
            )

        return require_admin
