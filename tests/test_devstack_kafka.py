"""The local broker's cleaner (Kafka's default for dev, one second for the test profile) and the
secure profile's listeners."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from devstack.kafka_security import BrokerSecurity
from devstack.layout import DEV, SECURE, TEST
from devstack.stack import Stack


def _properties(profile_name: str, tmp_path: Path) -> dict[str, str]:
    profile = {"dev": DEV, "test": TEST}[profile_name]
    broker = Stack(profile, {}).kafka
    # The same broker settings, written under this test's own directory.
    mine = replace(broker, data_dir=tmp_path / "kafka", run_dir=tmp_path / "run", log_dir=tmp_path / "logs")
    mine._write_properties()
    lines = mine.properties.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_the_test_profile_cleans_and_deletes_every_second(tmp_path: Path) -> None:
    properties = _properties("test", tmp_path)
    assert properties["log.cleaner.backoff.ms"] == "1000"
    assert properties["log.retention.check.interval.ms"] == "1000"


def test_dev_keeps_kafkas_defaults(tmp_path: Path) -> None:
    properties = _properties("dev", tmp_path)
    assert "log.cleaner.backoff.ms" not in properties
    assert "log.retention.check.interval.ms" not in properties


def test_the_secure_profile_takes_clients_only_over_sasl_ssl_and_checks_acls(tmp_path: Path) -> None:
    broker = Stack(SECURE, {}).kafka
    assert broker.security is not None and broker.port == SECURE.kafka_port
    security = BrokerSecurity(tmp_path / "security")
    security.ensure()
    mine = replace(
        broker,
        data_dir=tmp_path / "kafka",
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        security=security,
    )
    mine._write_properties()
    lines = mine.properties.read_text().splitlines()
    properties = dict(line.split("=", 1) for line in lines if "=" in line)
    assert properties["advertised.listeners"] == f"SASL_SSL://127.0.0.1:{SECURE.kafka_port}"
    assert "PLAINTEXT" not in properties["listener.security.protocol.map"].replace("SASL_", "")
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["super.users"] == "User:admin;User:controller", "no service is a super user"
    # Made once: a second ensure() keeps the passwords the broker's users were formatted with.
    passwords = security.passwords()
    security.ensure()
    assert security.passwords() == passwords and set(passwords) >= {"admin", "intake", "tally", "notify"}
    assert (security.passwords_file.stat().st_mode & 0o077) == 0, "only its owner reads the passwords"
