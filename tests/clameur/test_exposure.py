"""The public dev secret and admin token are refused off loopback, whatever CLAMEUR_ENV says."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from clameur.exposure import is_loopback
from clameur.settings import DEV_ADMIN_TOKEN, DEV_SECRET, ClameurSettings
from tests.conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from tests.support import PRODUCTION


def _settings(**fields: Any) -> ClameurSettings:
    return ClameurSettings(**{"secret": TEST_SECRET, "admin_token": TEST_ADMIN_TOKEN, **fields})


def test_only_loopback_addresses_count_as_loopback() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    # The wildcard, a private address, a name other than localhost, nothing: all reachable.
    reachable = ("0.0.0.0", "::", "10.1.2.3", "intake.internal", "")  # noqa: S104 - addresses under test
    assert not any(is_loopback(host) for host in reachable)


@pytest.mark.parametrize("env", ["dev", "test"])
def test_the_dev_secret_is_refused_off_loopback_in_any_environment(env: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _settings(env=env, host="0.0.0.0", secret=DEV_SECRET)  # noqa: S104 - as in a container
    message = str(refused.value)
    assert "CLAMEUR_SECRET is the public development value" in message
    assert "'0.0.0.0' (CLAMEUR_HOST)" in message and "openssl rand -hex 32" in message


def test_the_dev_admin_token_is_refused_off_loopback() -> None:
    with pytest.raises(ValidationError, match="CLAMEUR_ADMIN_TOKEN is the public development value"):
        _settings(env="dev", host="10.1.2.3", admin_token=DEV_ADMIN_TOKEN)


def test_the_dev_values_still_serve_a_developer_on_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        settings = ClameurSettings(env="dev", host=host, secret=DEV_SECRET, admin_token=DEV_ADMIN_TOKEN)
        assert settings.secret.get_secret_value() == DEV_SECRET


def test_real_values_listen_anywhere() -> None:
    assert _settings(env="dev", host="0.0.0.0").host == "0.0.0.0"  # noqa: S104 - as in a container


def test_production_starts_with_a_verified_tls_connection_to_postgres() -> None:
    settings = ClameurSettings(**PRODUCTION)
    assert settings.database_url.endswith("sslmode=verify-full")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://clameur@db.example.org:5432/clameur",
        "postgresql://clameur@db.example.org:5432/clameur?sslmode=require",
        "postgresql://clameur@db.example.org:5432/clameur?sslmode=verify-ca",
        "postgresql://clameur@db.example.org/clameur?sslmode=verify-full&sslmode=prefer",
    ],
)
def test_production_refuses_postgres_without_verified_tls(dsn: str) -> None:
    with pytest.raises(ValidationError, match=r"add \?sslmode=verify-full"):
        ClameurSettings(**{**PRODUCTION, "database_url": dsn})


def test_outside_production_postgres_may_be_plain() -> None:
    plain = "postgresql://clameur@127.0.0.1:5433/clameur"
    assert _settings(env="test", database_url=plain).database_url == plain
