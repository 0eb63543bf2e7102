"""Rate limits and client addresses, on a clock the test moves (no services)."""

from __future__ import annotations

import pytest
from intake.abuse import (
    ClientAddresses,
    DomainLimits,
    RateLimit,
    TokenBuckets,
    joined_forwarded_for,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_sustained_rate_applies() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=3, per_second=0.5), clock=clock, max_keys=100)
    assert [buckets.take("203.0.113.9") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("203.0.113.9")
    assert wait == pytest.approx(2.0)
    assert retry_after(wait) == "2"
    clock.now += 2.0
    assert buckets.take("203.0.113.9") == 0.0
    assert buckets.take("203.0.113.9") > 0
    # Another client has its own bucket.
    assert buckets.take("198.51.100.7") == 0.0


def test_a_refused_request_does_not_cost_a_token() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=1, per_second=1.0), clock=clock, max_keys=100)
    assert buckets.take("a") == 0.0
    for _ in range(5):
        assert buckets.take("a") > 0
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=2, per_second=10.0), clock=clock, max_keys=100)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_memory_is_bounded_by_forgetting_the_least_recent_client() -> None:
    buckets = TokenBuckets(RateLimit(burst=1, per_second=0.001), clock=Clock(), max_keys=3)
    for client in ("a", "b", "c", "d"):
        buckets.take(client)
    assert len(buckets) == 3
    assert buckets.take("a") == 0.0  # forgotten, so a full bucket again
    assert buckets.take("d") > 0


def test_a_burst_of_zero_turns_the_limit_off() -> None:
    buckets = TokenBuckets(RateLimit(burst=0, per_second=1.0), clock=Clock(), max_keys=10)
    assert all(buckets.take("a") == 0.0 for _ in range(1000))
    assert len(buckets) == 0


def test_large_mailbox_providers_are_exempt_from_the_domain_limit() -> None:
    limits = DomainLimits(TokenBuckets(RateLimit(1, 0.001), clock=Clock(), max_keys=10), ["gmail.com"])
    assert [limits.take("gmail.com") for _ in range(5)] == [0.0] * 5
    assert limits.take("throwaway.example") == 0.0
    assert limits.take("throwaway.example") > 0


def test_the_socket_peer_is_the_client_unless_a_trusted_proxy_forwards() -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "127.0.0.1"])
    assert addresses.client_ip("203.0.113.9", "198.51.100.7") == "203.0.113.9"
    assert addresses.client_ip("10.1.2.3", "198.51.100.7") == "198.51.100.7"
    # The left part is written by the client: only the rightmost untrusted hop counts.
    assert addresses.client_ip("10.1.2.3", "1.2.3.4, 198.51.100.7, 10.9.9.9") == "198.51.100.7"
    assert addresses.client_ip("10.1.2.3", None) == "10.1.2.3"
    assert addresses.client_ip("10.1.2.3", "garbage") == "10.1.2.3"
    assert addresses.client_ip(None, None) == "unknown"
    assert ClientAddresses([]).client_ip("127.0.0.1", "198.51.100.7") == "127.0.0.1"


def test_repeated_forwarded_for_lines_are_joined_in_their_order() -> None:
    headers = [
        (b"host", b"intake.test"),
        (b"x-forwarded-for", b"192.0.2.66"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"203.0.113.9"),
    ]
    assert joined_forwarded_for(headers) == [
        (b"host", b"intake.test"),
        (b"x-forwarded-for", b"192.0.2.66, 203.0.113.9"),
        (b"content-type", b"application/json"),
    ]
    single = headers[:2]
    assert joined_forwarded_for(single) is single
