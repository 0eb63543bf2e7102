"""Rate limits per client IP and per email domain, and who the client is.

Each limit is a token bucket of :mod:`clameur.buckets` (why not the ``limits`` library:
there).  Limits are per instance: behind a load balancer with N instances a client gets
up to N times the rate, which is fine for abuse control (not for billing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from clameur.buckets import TokenBuckets


class ClientAddresses:
    """The client's IP: the socket peer, or ``X-Forwarded-For`` when the peer is trusted.

    With trusted proxies, the forwarded list is read from the right and the first address
    that is not itself a trusted proxy is the client (the left part is client-written and
    could be forged).
    """

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address to rate-limit; ``"unknown"`` when the socket has no peer."""
        peer = peer or "unknown"
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        for hop in reversed(forwarded_for.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            if not self._is_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # garbage from a trusted proxy: fall back to the proxy
        return peer


FORWARDED_FOR = b"x-forwarded-for"


def joined_forwarded_for(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with repeated ``X-Forwarded-For`` lines joined into one, in their order.

    RFC 7230 (3.2.2) lets a recipient combine repeated fields so.  Some proxies add a
    line of their own rather than append to the client's: reading only the first line
    would then believe the client-written one, whatever the trusted proxies.  The joined
    line stands where the first one stood; a request with at most one is returned as is.
    """
    forwarded = [value for name, value in headers if name == FORWARDED_FOR]
    if len(forwarded) < 2:
        return headers
    joined: list[tuple[bytes, bytes]] = []
    placed = False
    for name, value in headers:
        if name != FORWARDED_FOR:
            joined.append((name, value))
        elif not placed:
            joined.append((FORWARDED_FOR, b", ".join(forwarded)))
            placed = True
    return joined


class ForwardedForJoined:
    """ASGI middleware: each request reaches the app with one ``X-Forwarded-For`` at most."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            joined = joined_forwarded_for(headers)
            if joined is not headers:
                scope = {**scope, "headers": joined}
        await self.app(scope, receive, send)


class DomainLimits:
    """Per email domain buckets, with large mailbox providers exempt."""

    def __init__(self, buckets: TokenBuckets, exempt: Iterable[str]) -> None:
        self._buckets = buckets
        self._exempt = frozenset(domain.lower() for domain in exempt)

    def take(self, domain: str) -> float:
        if domain in self._exempt:
            return 0.0
        return self._buckets.take(domain)
