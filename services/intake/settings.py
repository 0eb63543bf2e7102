"""Intake's settings: the shared ``CLAMEUR_*`` pieces plus the knobs of the front door.

Every field reads from ``CLAMEUR_<FIELD>`` (e.g. ``CLAMEUR_INTAKE_PORT``).  Dict and
list fields are JSON in the environment, e.g.
``CLAMEUR_WIDGET_KEYS='{"pk_live_nawal": ["https://free-nawal.example"]}'``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from clameur.settings import ClameurSettings

TURNSTILE_SITEVERIFY = "https://challenges.cloudflare.com/turnstile/v0/siteverify"

# Large mailbox providers are where a real surge's supporters are: a per-domain limit
# aimed at a bot's throwaway domain must not throttle them (the per-IP limit still applies).
DEFAULT_DOMAIN_EXEMPT = (
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "hotmail.fr",
    "live.com",
    "yahoo.com",
    "yahoo.fr",
    "icloud.com",
    "orange.fr",
    "free.fr",
    "gmx.de",
    "web.de",
    "proton.me",
    "protonmail.com",
)


class IntakeSettings(ClameurSettings):
    """What intake needs beyond the shared settings.  Durations are seconds."""

    intake_port: int = 8001
    intake_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="uvicorn worker processes; rate limits and the idempotency window are per worker",
    )

    # Admission control: requests held at once per process, past which a request is
    # answered 503 at once (docs/operations.md, "In a surge"; the loop-lag bound and the
    # Retry-After spread are the shared CLAMEUR_ADMISSION_* settings).  0: unbounded.
    intake_max_in_flight: int = Field(default=32, ge=0, description="widget signatures in flight per process")
    intake_bulk_max_in_flight: int = Field(default=4, ge=0, description="bulk imports in flight per process")

    # Durability: how long a request may wait for the broker's acknowledgement.
    broker_ack_timeout: float = Field(default=2.0, gt=0, le=30)
    broker_retry_after: int = Field(default=2, ge=1, description="Retry-After (s) on a 503")
    producer_linger_ms: int = Field(default=5, ge=0, le=100)
    producer_request_timeout_ms: int = Field(default=10_000, ge=1000)
    broker_probe_interval: float = Field(
        default=0.5, gt=0, description="while the broker is failing, one request per interval probes it"
    )
    producer_reset_after: float = Field(
        default=10.0, gt=0, description="a producer failing this long is replaced by a new one"
    )

    # Request bodies.
    max_body_bytes: int = Field(default=8 * 1024, ge=512)
    batch_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    batch_max_items: int = Field(default=1000, ge=1, le=10_000)

    # Idempotency-Key window, per instance.
    idempotency_max_keys: int = Field(default=100_000, ge=0)
    idempotency_ttl: float = Field(default=24 * 3600.0, gt=0)

    # Rate limits: a token bucket per key; ``burst`` requests at once, refilled at
    # ``per_second``.  A burst of 0 turns that limit off (benchmarks from one IP).
    rate_limit_ip_burst: int = Field(default=30, ge=0)
    rate_limit_ip_per_second: float = Field(default=2.0, gt=0)
    rate_limit_domain_burst: int = Field(default=500, ge=0)
    rate_limit_domain_per_second: float = Field(default=100.0, gt=0)
    rate_limit_domain_exempt: list[str] = Field(default_factory=lambda: list(DEFAULT_DOMAIN_EXEMPT))
    rate_limit_max_keys: int = Field(default=200_000, ge=100, description="buckets kept in memory")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="peers (IPs or CIDR networks) whose X-Forwarded-For is believed",
    )

    # Widget keys (public, publishable) and the browser origins each may be used from.
    widget_keys: dict[str, list[str]] = Field(default_factory=dict)
    widget_key_required: bool = Field(
        default=False,
        description="refuse requests without a widget key even when they carry no Origin",
    )

    # The petition widget's script (built by `make widget`) and the public reads (tally's
    # counts and live stream) it is told to read from.
    widget_script: Path = Path(__file__).resolve().parents[2] / "widget" / "dist" / "widget.js"
    public_reads_url: str = "http://127.0.0.1:8002"

    # Partners' bulk import: secret partner key -> partner name.
    partner_keys: dict[str, str] = Field(default_factory=dict, repr=False)

    # Cloudflare Turnstile; off unless a secret is set.
    turnstile_secret: SecretStr | None = None
    turnstile_verify_url: str = TURNSTILE_SITEVERIFY
    turnstile_timeout: float = Field(default=3.0, gt=0)

    @model_validator(mode="after")
    def _check_networks(self) -> Self:
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ValueError(f"CLAMEUR_TRUSTED_PROXIES: {proxy!r} is not an IP or network") from exc
        for key, origins in self.widget_keys.items():
            if not key or not origins:
                raise ValueError(f"CLAMEUR_WIDGET_KEYS: widget key {key!r} needs at least one origin")
        return self
