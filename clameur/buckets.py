"""Token buckets: ``burst`` requests at once, then ``per_second`` on average, per key.

One burst and one sustained rate in a single O(1) check.  Intake limits signatures per
client IP and per email domain with them; tally and notify limit failed admin
authentications per client IP (:mod:`clameur.admin`).

Why not the ``limits`` library: its in-memory storage sweeps every key from a timer
thread every 10 ms; with 100,000 client IPs in memory (a real surge) a check measured
~50 µs instead of ~7 µs, on the hot path of every signature.  A bucket here is two
floats in a bounded LRU dict, and a bucket idle long enough to be full again is simply
forgotten (being absent and being full mean the same).

Limits are per instance: behind a load balancer with N instances a client gets up to
N times the rate, which is fine for abuse control (not for billing).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimit:
    """At most ``burst`` at once, refilled at ``per_second``; a burst of 0 means no limit."""

    burst: int
    per_second: float

    @property
    def enabled(self) -> bool:
        return self.burst > 0


class TokenBuckets:
    """One token bucket per key (an IP, a domain), at most ``max_keys`` kept (LRU)."""

    def __init__(self, limit: RateLimit, *, clock: Clock, max_keys: int) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens left, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until one is back."""
        if not self.limit.enabled:
            return 0.0
        now = self._clock()
        burst = float(self.limit.burst)
        found = self._buckets.get(key)
        if found is None:
            tokens = burst
        else:
            left, then = found
            tokens = min(burst, left + (now - then) * self.limit.per_second)
            self._buckets.move_to_end(key)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.limit.per_second
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_keys:
            # Forgetting the least recently seen client gives it a full bucket back:
            # lenient, and memory stays bounded whatever the number of clients.
            self._buckets.popitem(last=False)
        return 0.0

    def wait(self, key: str) -> float:
        """The seconds until ``key`` has a token again, without taking one (0.0: it has one)."""
        found = self._buckets.get(key)
        if not self.limit.enabled or found is None:
            return 0.0
        left, then = found
        tokens = left + (self._clock() - then) * self.limit.per_second
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.limit.per_second

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
