"""Where the local stack keeps its things, and on which ports, per profile.

``dev`` is what ``make up`` runs; ``test`` is what ``make test`` starts when no
existing Kafka/Postgres is given and no Docker engine answers: other ports, other
data, so a test run never touches the dev stack.  ``secure`` runs the broker with TLS,
SCRAM users and ACLs, on ports and data of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CLAMEUR_CACHE", ROOT / ".cache"))
KAFKA_LIBS = CACHE / "kafka" / "libs"


class _InHome:
    """A path in a profile's home: ``run_dir = _InHome("run")`` is ``<home>/run``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, profile: Profile, owner: type[Profile] | None = None) -> Path:
        return profile.home / self.name


@dataclass(frozen=True)
class Profile:
    name: str
    kafka_port: int
    controller_port: int
    postgres_port: int
    smtp_port: int
    prometheus_port: int
    intake_port: int = 8001
    tally_port: int = 8002
    notify_port: int = 8003
    demo_page_port: int = 8080
    kafka_cleaner_backoff_ms: int | None = None
    """The broker's ``log.cleaner.backoff.ms``; None is Kafka's default (see devstack.kafka)."""
    kafka_retention_check_interval_ms: int | None = None
    """The broker's ``log.retention.check.interval.ms``; None is Kafka's default."""
    kafka_secure: bool = False
    """The broker listens with SASL_SSL only, with SCRAM users and ACLs (devstack.kafka_security)."""

    @property
    def home(self) -> Path:
        return CACHE / self.name

    run_dir = _InHome("run")
    log_dir = _InHome("logs")
    kafka_data = _InHome("kafka")
    postgres_data = _InHome("postgres")
    mail_dir = _InHome("mail")
    demo_cases = _InHome("demo-cases.json")
    """The case ids of the last ``make demo``, which the demo page shows."""
    prometheus_data = _InHome("prometheus")
    kafka_security = _InHome("kafka-security")
    """The secure profile's CA, broker keystore and users' passwords."""


DEV = Profile(
    "dev", kafka_port=9092, controller_port=9093, postgres_port=5433, smtp_port=1025, prometheus_port=9090
)
TEST = Profile(
    "test",
    kafka_port=19092,
    controller_port=19093,
    postgres_port=15433,
    smtp_port=11025,
    prometheus_port=19090,
    demo_page_port=18080,
    # Compaction within seconds: the erasure tests' bound is 5 s (tests/conftest.py).
    kafka_cleaner_backoff_ms=1000,
    kafka_retention_check_interval_ms=1000,
)
SECURE = Profile(
    "secure",
    kafka_port=29092,
    controller_port=29093,
    postgres_port=25433,
    smtp_port=21025,
    prometheus_port=29090,
    intake_port=28001,
    tally_port=28002,
    notify_port=28003,
    demo_page_port=28080,
    kafka_cleaner_backoff_ms=1000,
    kafka_retention_check_interval_ms=1000,
    kafka_secure=True,
)
"""Kafka over SASL_SSL, one user per service, least-privilege ACLs (tests/e2e/test_kafka_security.py)."""
PROFILES = {profile.name: profile for profile in (DEV, TEST, SECURE)}
