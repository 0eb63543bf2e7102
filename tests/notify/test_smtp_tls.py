"""In production notify mails over TLS only: smtps://, or a STARTTLS the server must grant."""

from __future__ import annotations

import pytest
from notify.settings import NotifySettings, parse_smtp_url
from pydantic import ValidationError

from tests.support import PRODUCTION


@pytest.mark.parametrize(
    "url",
    ["smtps://user:pass@smtp.example.org:465", "smtp://user:pass@smtp.example.org:587?starttls=required"],
)
def test_production_mails_over_tls_or_a_required_starttls(url: str) -> None:
    settings = NotifySettings(**{**PRODUCTION, "smtp_url": url})
    assert settings.smtp.use_tls or settings.smtp.start_tls is True


@pytest.mark.parametrize("url", ["smtp://smtp.example.org:25", "smtp://smtp.example.org:587?starttls=auto"])
def test_production_refuses_plain_or_optional_starttls(url: str) -> None:
    with pytest.raises(ValidationError, match="CLAMEUR_SMTP_URL must use TLS in production") as refused:
        NotifySettings(**{**PRODUCTION, "smtp_url": url})
    assert "starttls=required" in str(refused.value)


def test_a_required_starttls_is_the_same_as_true() -> None:
    assert parse_smtp_url("smtp://x.example?starttls=required") == parse_smtp_url(
        "smtp://x.example?starttls=true"
    )


def test_a_local_sink_stays_plain_outside_production() -> None:
    assert NotifySettings(env="dev", smtp_url="smtp://127.0.0.1:1025").smtp.start_tls is False
