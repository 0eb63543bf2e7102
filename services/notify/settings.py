"""Notify's settings: where to send mail from and how fast, on top of the shared pieces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from clameur.retry import RetryPolicy
from clameur.settings import MIN_SECRET_LENGTH, ConfirmationSettings


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to reach the SMTP server, parsed from ``CLAMEUR_SMTP_URL``.

    ``start_tls`` is ``None`` for "upgrade if the server offers it" (aiosmtplib's auto).
    """

    hostname: str
    port: int
    use_tls: bool
    start_tls: bool | None
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpEndpoint:
    """``smtp://host:port``, ``smtps://user:pass@host:port``, ``smtp://host:587?starttls=true``.

    ``starttls`` accepts ``true`` (or ``required``: no STARTTLS, no mail), ``false`` or
    ``auto`` (upgrade if offered, so a man in the middle can strip it); plain ``smtp://`` defaults to no
    STARTTLS (a local sink), ``smtps://`` is TLS from the first byte.  Raises ``ValueError``
    with a readable message on anything else.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"CLAMEUR_SMTP_URL must start with smtp:// or smtps://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("CLAMEUR_SMTP_URL has no host")
    use_tls = parts.scheme == "smtps"
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    start_tls: bool | None = False
    flag = query.get("starttls", "false").lower()
    if flag in ("true", "required", "1", "yes"):
        start_tls = True
    elif flag == "auto":
        start_tls = None
    elif flag not in ("false", "0", "no"):
        raise ValueError("CLAMEUR_SMTP_URL's starttls flag must be true (required), false or auto")
    if use_tls and start_tls:
        raise ValueError("CLAMEUR_SMTP_URL: smtps:// is already TLS; drop ?starttls")
    if use_tls:
        start_tls = False
    port = parts.port or (465 if use_tls else 587 if start_tls else 25)
    return SmtpEndpoint(
        hostname=parts.hostname,
        port=port,
        use_tls=use_tls,
        start_tls=start_tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _refuse_smtp_without_tls(endpoint: SmtpEndpoint) -> None:
    """Production mails over TLS: from the first byte, or a STARTTLS the server must grant.

    ``starttls=auto`` is refused too: a server (or a man in the middle) that does not
    offer the upgrade would get every address and message in clear.
    """
    if not (endpoint.use_tls or endpoint.start_tls is True):
        raise ValueError(
            "CLAMEUR_SMTP_URL must use TLS in production: smtps://user:pass@host:465, or "
            "smtp://user:pass@host:587?starttls=required"
        )


class NotifySettings(ConfirmationSettings):
    """Everything notify reads from ``CLAMEUR_*`` at start."""

    notify_port: int = 8003
    smtp_url: SecretStr = Field(
        default=SecretStr("smtp://127.0.0.1:1025"),
        description="smtp://host:port or smtps://user:pass@host:port (a secret: it may hold a password)",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8003", description="base of the unsubscribe links in emails"
    )
    notify_pages_max_in_flight: int = Field(
        default=128,
        ge=0,
        description="confirmation and unsubscribe pages in flight per process (0: unbounded)",
    )
    token_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="master secrets of link tokens, newest (signing) first; empty: CLAMEUR_SECRET alone",
    )
    notify_sender_address: str = "news@clameur.localhost"
    notify_sender_name: str = "Clameur"
    notify_rate_per_s: float = Field(default=200.0, gt=0, description="emails per second, at most")
    # 16 connections: each email is four round trips, so connections hide the latency of
    # the server and of notify's own event loop (bench-notify, 100,000 emails to a local
    # sink: 8 connections 0.71 of the sink's ceiling, 16 connections 0.78).  Relays such as
    # Postfix allow 20 per destination by default; lower it for a stricter provider.
    notify_concurrency: int = Field(default=32, ge=1, description="emails being built or sent at once")
    notify_smtp_pool_size: int = Field(default=16, ge=1, description="SMTP connections kept open")
    notify_messages_per_connection: int = Field(
        default=500, ge=1, description="a connection is renewed after this many messages"
    )
    notify_smtp_timeout_s: float = 30.0
    notify_max_attempts: int = Field(default=8, ge=1, description="SMTP attempts before giving up")
    notify_retry_initial_s: float = Field(default=30.0, gt=0)
    notify_retry_max_s: float = Field(default=3600.0, gt=0)
    notify_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="a delivery claimed by a process that died is retried after this long",
    )
    notify_claim_batch: int = Field(default=200, ge=1)
    notify_idle_poll_s: float = Field(default=0.5, gt=0)
    notify_fanout_grace_s: float = Field(
        default=2.0,
        ge=0,
        description="wait this long after an event before fanning out (late signatures land)",
    )
    confirmation_reminder_s: float = Field(
        default=48 * 3600.0,
        gt=0,
        description="one reminder goes this long after an unanswered confirmation email",
    )
    notify_ready_checks_smtp: bool = False
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="how often the retention job looks for supporters to forget"
    )
    retention_days: int | None = Field(
        default=None,
        ge=0,
        description="days personal data is kept after a case is won or closed, for every case"
        " (unset: each case's retention_days)",
    )
    notify_send: bool = Field(
        default=True,
        description=(
            "false for `make rebuild`: read and fan out as usual, but send nothing and mark nothing "
            "as sent (past events must not email anyone again)"
        ),
    )
    notify_group_prefix: str | None = Field(
        default=None,
        description=(
            "prefix of notify's consumer groups instead of CLAMEUR_TOPIC_PREFIX: a rebuild reads "
            "the live topics in groups of its own"
        ),
    )
    notify_crash_after_smtp: bool = Field(
        default=False, description="test only: die with SIGKILL after the first accepted email"
    )

    @field_validator("public_url")
    @classmethod
    def _public_url_is_http(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("CLAMEUR_PUBLIC_URL must be an http(s):// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> Self:
        parse_smtp_url(self.smtp_url.get_secret_value())
        if self.notify_retry_max_s < self.notify_retry_initial_s:
            raise ValueError(
                "CLAMEUR_NOTIFY_RETRY_MAX_S must be at least CLAMEUR_NOTIFY_RETRY_INITIAL_S (the first delay)"
            )
        if self.notify_crash_after_smtp and self.env != "test":
            raise ValueError("CLAMEUR_NOTIFY_CRASH_AFTER_SMTP is honoured only with CLAMEUR_ENV=test")
        if self.env == "production" and not self.public_url.startswith("https://"):
            raise ValueError("CLAMEUR_PUBLIC_URL must be https:// in production (RFC 8058 links)")
        if self.env == "production":
            _refuse_smtp_without_tls(self.smtp)
            if any(len(secret) < MIN_SECRET_LENGTH for secret in self.token_masters):
                raise ValueError(
                    f"CLAMEUR_TOKEN_SECRETS: each secret needs at least {MIN_SECRET_LENGTH} random "
                    "characters in production (for example `openssl rand -hex 32`)"
                )
        return self

    @property
    def token_masters(self) -> tuple[str, ...]:
        """The master secrets of link tokens, newest first: the first signs, all verify.

        Only tokens rotate: supporter keys, suppression hashes and sealed contacts stay
        under ``CLAMEUR_SECRET`` (docs/operations.md, "Rotating the token key").
        """
        if not self.token_secrets:
            return (self.secret.get_secret_value(),)
        return tuple(secret.get_secret_value() for secret in self.token_secrets)

    @property
    def smtp(self) -> SmtpEndpoint:
        return parse_smtp_url(self.smtp_url.get_secret_value())

    @property
    def email_retries(self) -> RetryPolicy:
        """When a temporary SMTP failure is tried again, and when it is given up."""
        return RetryPolicy(
            initial_s=self.notify_retry_initial_s,
            maximum_s=self.notify_retry_max_s,
            max_attempts=self.notify_max_attempts,
        )

    @property
    def public_domain(self) -> str:
        """The host of the public URL: the right-hand side of every Message-ID."""
        return urlsplit(self.public_url).hostname or "localhost"
