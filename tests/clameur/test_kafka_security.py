"""How a service logs in to Kafka (clameur.kafka.client_kwargs, the CLAMEUR_KAFKA_* settings)
and what each service's user may do (clameur.acls); the broker's refusals are in
tests/e2e/test_kafka_security.py."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from clameur.acls import Grant, Operation, Pattern, Resource, service_grants
from clameur.kafka import KafkaAccess, client_kwargs
from clameur.settings import ClameurSettings
from clameur.topics import Topics
from tests.support import PRODUCTION as PRODUCTION_SETTINGS
from tests.support import settings_from

PRODUCTION = {
    "CLAMEUR_ENV": "production",
    "CLAMEUR_SECRET": "s" * 40,
    "CLAMEUR_ADMIN_TOKEN": "a" * 40,
    "CLAMEUR_DATABASE_URL": PRODUCTION_SETTINGS["database_url"],
}


def test_production_refuses_a_plaintext_kafka() -> None:
    with pytest.raises(ValidationError, match="CLAMEUR_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"):
        settings_from(ClameurSettings, PRODUCTION)


def test_a_client_over_sasl_ssl_without_a_password_is_refused() -> None:
    env = {**PRODUCTION, "CLAMEUR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CLAMEUR_KAFKA_USERNAME": "intake"}
    settings = settings_from(ClameurSettings, env)  # the migrations job needs no Kafka login
    with pytest.raises(ValueError, match="needs this service's CLAMEUR_KAFKA_USERNAME"):
        client_kwargs(settings.kafka_access)


def test_production_over_sasl_ssl_logs_in_as_its_user_with_the_ca(tmp_path: Path) -> None:
    ca_file = _a_ca(tmp_path)
    settings = settings_from(
        ClameurSettings,
        {
            **PRODUCTION,
            "CLAMEUR_KAFKA": "kafka-0.internal:9093",
            "CLAMEUR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CLAMEUR_KAFKA_USERNAME": "intake",
            "CLAMEUR_KAFKA_PASSWORD": "intake-password",
            "CLAMEUR_KAFKA_CA_FILE": str(ca_file),
        },
    )
    assert "intake-password" not in repr(settings), "the password is a SecretStr"
    kwargs = client_kwargs(settings.kafka_access)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": "kafka-0.internal:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "intake",
        "sasl_plain_password": "intake-password",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1, "the given CA is trusted"


def test_a_plaintext_cluster_gets_its_address_alone() -> None:
    assert client_kwargs("127.0.0.1:19092") == {"bootstrap_servers": "127.0.0.1:19092"}
    plain = KafkaAccess("127.0.0.1:9092", username="ignored", password=SecretStr("ignored"))
    assert client_kwargs(plain) == {"bootstrap_servers": "127.0.0.1:9092"}


def test_each_service_may_touch_only_what_its_code_uses() -> None:
    t = Topics(prefix="p.")
    grants = service_grants(t, tally_group="p.tally", notify_groups="p.notify-")

    def on(user: str, operation: Operation) -> set[str]:
        return {g.name for g in grants[user] if g.resource is Resource.TOPIC and g.operation is operation}

    assert on("intake", Operation.WRITE) == {t.signatures, t.contacts}
    assert on("intake", Operation.READ) == {t.cases}
    assert on("tally", Operation.READ) == {t.signatures}
    assert on("tally", Operation.WRITE) == {t.cases, t.case_events, t.signatures, t.dlq(t.signatures)}
    assert on("notify", Operation.READ) == {t.signatures, t.contacts, t.suppressions, t.cases, t.case_events}
    assert t.cases not in on("notify", Operation.WRITE) and t.case_events not in on("notify", Operation.WRITE)
    groups = {user: [g for g in gs if g.resource is Resource.GROUP] for user, gs in grants.items()}
    assert groups == {
        "intake": [],
        "tally": [Grant(Resource.GROUP, "p.tally", Operation.READ)],
        "notify": [Grant(Resource.GROUP, "p.notify-", Operation.READ, Pattern.PREFIXED)],
    }
    # Nobody but the provisioning user creates topics or touches the cluster.
    assert all(
        g.resource is not Resource.CLUSTER and g.operation is not Operation.CREATE
        for gs in grants.values()
        for g in gs
    )


def _a_ca(folder: Path) -> Path:
    ca, key = folder / "ca.crt", folder / "ca.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            str(key),
            "-out",
            str(ca),
        ],
        check=True,
        capture_output=True,
    )
    return ca
