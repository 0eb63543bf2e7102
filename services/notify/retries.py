"""Whether an SMTP failure is worth another try, and how fast to send: pure, clock injected.

How long to wait before the next try is :class:`clameur.retry.RetryPolicy`, the backoff
every loop of every service shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

FailureKind = Literal["temporary", "permanent"]


def classify_smtp_code(code: int | None) -> FailureKind:
    """4xx (and a lost connection, ``None``) is worth retrying; 5xx is final.

    RFC 5321: 4yz replies are "transient negative", 5yz "permanent negative".  Anything
    outside 400-599 (a protocol surprise) is treated as transient: retrying is cheaper
    than losing the message, and ``max_attempts`` bounds it.
    """
    if code is not None and 500 <= code <= 599:
        return "permanent"
    return "temporary"


class RateLimiter:
    """At most ``rate_per_s`` reservations per second on average, bursts of ``burst``.

    A virtual-schedule limiter (GCRA): each reservation takes the next free slot and
    says how long to wait for it.  Not thread-safe; one event loop only.
    """

    def __init__(self, rate_per_s: float, clock: Callable[[], float], burst: int = 1) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self._interval = 1.0 / rate_per_s
        self._burst_s = max(0, burst - 1) * self._interval
        self._clock = clock
        self._next_free: float | None = None

    def reserve(self) -> float:
        """Take a slot; returns the seconds to wait before using it (0 when free now)."""
        now = self._clock()
        earliest = now - self._burst_s
        slot = earliest if self._next_free is None else max(self._next_free, earliest)
        self._next_free = slot + self._interval
        return max(0.0, slot - now)
