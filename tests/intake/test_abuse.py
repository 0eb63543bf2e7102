"""Rate limits and client addresses, on a clock the test moves (no services)."""

from __future__ import annotations

from intake.abuse import ClientAddresses, DomainLimits, joined_forwarded_for

from clameur.buckets import RateLimit, TokenBuckets
from tests.clameur.test_buckets import Clock


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
