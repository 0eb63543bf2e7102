"""Retrying with backoff: one policy for every loop of every service.

Pure where it can be: :class:`RetryPolicy` computes delays from a count of failures and
a random value it is given; :class:`Backoff` walks one run of failures with the
randomness injected; :func:`retry` drives an async attempt with the sleep injected.  So
the consumer's applies, the outbox relay, the producer's reconnection, the follower of
``cases.v1`` and notify's email retries all back off the same way, and tests can run
them without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from clameur.logs import describe_error

R = TypeVar("R")

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Random = Callable[[], float]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped; ``max_attempts`` None retries forever."""

    initial_s: float
    maximum_s: float
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.maximum_s < self.initial_s:
            raise ValueError("need 0 < initial_s <= maximum_s")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay_after(self, attempts: int, random_value: float) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based).

        ``random_value`` in [0, 1) spreads retries over [0.5, 1.5) of the nominal delay,
        so a hiccup does not bring every retry back at the same instant; the result never
        passes ``maximum_s``.
        """
        nominal = min(self.maximum_s, self.initial_s * 2.0 ** max(0, attempts - 1))
        return min(self.maximum_s, nominal * (0.5 + random_value))

    def gives_up_after(self, attempts: int) -> bool:
        return self.max_attempts is not None and attempts >= self.max_attempts


class Backoff:
    """One run of failures under a policy: each :meth:`failed` says how long to wait.

    :meth:`succeeded` starts a new run, so a loop that works again starts from the
    initial delay at its next failure.
    """

    def __init__(self, policy: RetryPolicy, random_value: Random = random.random) -> None:
        self.policy = policy
        self._random = random_value
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return self.policy.delay_after(self.failures, self._random())

    def succeeded(self) -> None:
        self.failures = 0

    @property
    def exhausted(self) -> bool:
        return self.policy.gives_up_after(self.failures)


async def retry(
    what: str,
    attempt: Callable[[], Awaitable[R]],
    policy: RetryPolicy,
    *,
    stopping: Callable[[], bool] = lambda: False,
    sleep: Sleep = asyncio.sleep,
    random_value: Random = random.random,
) -> R:
    """Await ``attempt()`` until it returns, backing off after each failure.

    Re-raises the failure when ``stopping()`` is true at that moment (the caller is shutting
    down: nothing more is attempted) or when the policy gives up.  Each failure is logged
    with ``what``, the delay and the error's type (never its text: see
    :func:`clameur.logs.describe_error`).  Cancellation is never caught.
    """
    backoff = Backoff(policy, random_value)
    while True:
        try:
            return await attempt()
        except Exception as error:
            delay = backoff.failed()
            if stopping() or backoff.exhausted:
                raise
            logger.warning(
                "%s failed; retrying in %.1f s",
                what,
                delay,
                extra={"error": describe_error(error)},
            )
            await sleep(delay)
