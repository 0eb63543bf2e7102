"""Notify's retry policy (the shared one), failure classification, the rate cap and the SMTP URL."""

from __future__ import annotations

import pytest
from notify.retries import RateLimiter, classify_smtp_code
from notify.settings import NotifySettings, parse_smtp_url
from pydantic import ValidationError

from clameur.retry import RetryPolicy


def test_4xx_and_lost_connections_are_temporary_5xx_permanent() -> None:
    assert classify_smtp_code(451) == "temporary"
    assert classify_smtp_code(421) == "temporary"
    assert classify_smtp_code(None) == "temporary"
    assert classify_smtp_code(550) == "permanent"
    assert classify_smtp_code(554) == "permanent"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=5, initial_s=10, maximum_s=60)
    assert policy.delay_after(1, 0.5) == 10
    assert policy.delay_after(2, 0.5) == 20
    assert policy.delay_after(3, 0.0) == 20  # jitter spreads [0.5, 1.5) of 40
    assert policy.delay_after(3, 0.999) == pytest.approx(59.96)
    assert policy.delay_after(10, 0.9) == 60
    assert not policy.gives_up_after(4) and policy.gives_up_after(5)


def test_the_rate_cap_spaces_sends_after_a_burst() -> None:
    now = [100.0]
    limiter = RateLimiter(10, clock=lambda: now[0], burst=2)
    waits = [limiter.reserve() for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2])
    now[0] += 10  # idle for a while: the burst is available again, no more
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


def test_smtp_urls() -> None:
    plain = parse_smtp_url("smtp://127.0.0.1:1025")
    assert (plain.hostname, plain.port, plain.use_tls, plain.start_tls) == ("127.0.0.1", 1025, False, False)
    tls = parse_smtp_url("smtps://user%40x:p%3Ass@mail.example.org")
    assert (tls.port, tls.use_tls, tls.username, tls.password) == (465, True, "user@x", "p:ss")
    upgraded = parse_smtp_url("smtp://mail.example.org?starttls=true")
    assert (upgraded.port, upgraded.start_tls) == (587, True)
    assert parse_smtp_url("smtp://mail.example.org:25?starttls=auto").start_tls is None
    for bad in ("http://x", "smtp://", "smtps://x?starttls=true", "smtp://x?starttls=maybe"):
        with pytest.raises(ValueError):
            parse_smtp_url(bad)


def test_the_email_retries_come_from_the_settings_and_a_cap_below_the_first_delay_is_refused() -> None:
    policy = NotifySettings.model_validate(
        {"notify_retry_initial_s": 0.2, "notify_retry_max_s": 1, "notify_max_attempts": 5}
    ).email_retries
    assert (policy.initial_s, policy.maximum_s, policy.max_attempts) == (0.2, 1, 5)
    with pytest.raises(ValidationError, match="CLAMEUR_NOTIFY_RETRY_MAX_S must be at least"):
        NotifySettings.model_validate({"notify_retry_initial_s": 30, "notify_retry_max_s": 10})
