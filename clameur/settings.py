"""Settings read once at start from ``CLAMEUR_*`` environment variables.

Each service has one settings class built from these pieces, so one environment file
configures the whole stack.  Build settings in ``main()`` and pass them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PositiveInt, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clameur.exposure import refuse_dev_values_off_loopback, refuse_postgres_without_verified_tls
from clameur.kafka import KafkaAccess, SecurityProtocol
from clameur.topics import Topics

DEV_SECRET = "dev-secret-not-for-production"  # noqa: S105 - refused outside dev
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - refused outside dev

MIN_SECRET_LENGTH = 32


class ClameurSettings(BaseSettings):
    """What every service needs: where Kafka and Postgres are, and the shared secrets."""

    model_config = SettingsConfigDict(env_prefix="CLAMEUR_", extra="ignore", frozen=True)

    env: Literal["dev", "test", "production"] = "dev"
    kafka: str = "127.0.0.1:9092"
    # -- how the services log in to Kafka (docs/operations.md, "Kafka users and ACLs") --
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="SASL_SSL: TLS and a SCRAM login (required in production)"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    kafka_username: str | None = Field(default=None, description="this service's own Kafka user")
    kafka_password: SecretStr | None = None
    kafka_ca_file: Path | None = Field(
        default=None, description="the CA that signed the brokers' certificates (else the system's)"
    )
    database_url: str = "postgresql://clameur@127.0.0.1:5433/clameur"
    topic_prefix: str = Field(
        default="", description="prepended to every topic name (tests isolate themselves with it)"
    )
    secret: SecretStr = SecretStr(DEV_SECRET)
    admin_token: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    host: str = "127.0.0.1"
    erasure_bound_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="how long personal data may outlive its erasure (topics, DLQs); tests use seconds",
    )
    log_level: str = "INFO"
    log_json: bool = True

    # Admission control (clameur.admission, docs/operations.md "In a surge"): past a bound
    # a request is answered 503 at once with a jittered Retry-After instead of queueing.
    admission_enabled: bool = Field(default=True, description="false: no bound refuses (benchmarks only)")
    admission_max_wait_s: float = Field(
        default=0.02,
        ge=0,
        description=(
            "while the event loop runs later than this (a new request's wait),"
            " each lane holds a quarter of its bound; 0: off"
        ),
    )
    admission_retry_after_s: tuple[PositiveInt, PositiveInt] = Field(
        default=(1, 5), description="Retry-After of a refusal: whole seconds drawn from this range (JSON)"
    )

    @model_validator(mode="after")
    def _refuse_dev_secrets_outside_dev(self) -> Self:
        if self.env == "production":
            for name, value in (("CLAMEUR_SECRET", self.secret), ("CLAMEUR_ADMIN_TOKEN", self.admin_token)):
                if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
                    raise ValueError(
                        f"{name} is too short for production: use at least {MIN_SECRET_LENGTH} random "
                        "characters (for example `openssl rand -hex 32`)"
                    )
            refuse_postgres_without_verified_tls(self.database_url)
        refuse_dev_values_off_loopback(
            self.host,
            {
                "CLAMEUR_SECRET": (self.secret.get_secret_value(), DEV_SECRET),
                "CLAMEUR_ADMIN_TOKEN": (self.admin_token.get_secret_value(), DEV_ADMIN_TOKEN),
            },
        )
        if self.env != "dev":
            if self.secret.get_secret_value() == DEV_SECRET:
                raise ValueError(
                    "CLAMEUR_SECRET is the development secret; set a long random value "
                    "(for example `openssl rand -hex 32`) outside CLAMEUR_ENV=dev"
                )
            if self.admin_token.get_secret_value() == DEV_ADMIN_TOKEN:
                raise ValueError(
                    "CLAMEUR_ADMIN_TOKEN is the development token; set a long random value "
                    "outside CLAMEUR_ENV=dev"
                )
        return self

    @model_validator(mode="after")
    def _refuse_plaintext_kafka_in_production(self) -> Self:
        if self.env == "production" and self.kafka_security_protocol == "PLAINTEXT":
            raise ValueError(
                "CLAMEUR_KAFKA_SECURITY_PROTOCOL is PLAINTEXT: production talks to Kafka over "
                "SASL_SSL, with this service's CLAMEUR_KAFKA_USERNAME and CLAMEUR_KAFKA_PASSWORD"
            )
        # A missing user is refused when a client is built (clameur.kafka.client_kwargs), so
        # a one-shot job that never talks to Kafka (the migrations) needs no Kafka login.
        return self

    @property
    def kafka_access(self) -> KafkaAccess:
        """How this service's clients reach and log in to Kafka (clameur.kafka.client_kwargs)."""
        return KafkaAccess(
            self.kafka,
            self.kafka_security_protocol,
            self.kafka_sasl_mechanism,
            self.kafka_username,
            self.kafka_password,
            self.kafka_ca_file,
        )

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)


class ConfirmationSettings(ClameurSettings):
    """The confirmation window, one setting for the two services that keep it: tally counts
    a pending signature confirmed within it, and notify's confirm and reject links work
    for as long."""

    confirmation_expiry_s: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        description="a pending signature counts if confirmed within this long (30 days), and its links work",
    )
