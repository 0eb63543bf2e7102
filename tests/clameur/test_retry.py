"""The one retry policy every loop uses: delays, the cap, giving up, stopping."""

from __future__ import annotations

import pytest

from clameur.retry import Backoff, RetryPolicy, retry


def test_delays_double_from_the_initial_one_and_stop_at_the_cap() -> None:
    policy = RetryPolicy(initial_s=0.5, maximum_s=4.0)
    # random 0.5 is the nominal delay itself
    assert [policy.delay_after(n, 0.5) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_spreads_over_half_to_one_and_a_half_but_never_passes_the_cap() -> None:
    policy = RetryPolicy(initial_s=1.0, maximum_s=3.0)
    assert policy.delay_after(1, 0.0) == 0.5
    assert policy.delay_after(1, 0.999) == pytest.approx(1.499)
    assert policy.delay_after(5, 0.999) == 3.0


def test_a_policy_without_max_attempts_never_gives_up() -> None:
    assert not RetryPolicy(initial_s=1, maximum_s=2).gives_up_after(10**6)
    assert RetryPolicy(initial_s=1, maximum_s=2, max_attempts=3).gives_up_after(3)
    assert not RetryPolicy(initial_s=1, maximum_s=2, max_attempts=3).gives_up_after(2)


@pytest.mark.parametrize(
    "kwargs", [{"initial_s": 0, "maximum_s": 1}, {"initial_s": 2, "maximum_s": 1}, {"max_attempts": 0}]
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        RetryPolicy(**{"initial_s": 1, "maximum_s": 2, **kwargs})  # type: ignore[arg-type]


def test_backoff_starts_again_after_a_success() -> None:
    backoff = Backoff(RetryPolicy(initial_s=1, maximum_s=8), random_value=lambda: 0.5)
    assert [backoff.failed(), backoff.failed(), backoff.failed()] == [1, 2, 4]
    backoff.succeeded()
    assert backoff.failed() == 1


async def test_retry_sleeps_the_policy_delays_until_the_attempt_succeeds() -> None:
    slept: list[float] = []
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("database restarting")
        return "applied"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(initial_s=0.2, maximum_s=0.5)
    assert await retry("apply", attempt, policy, sleep=sleep, random_value=lambda: 0.5) == "applied"
    assert slept == [0.2, 0.4, 0.5]


async def test_retry_gives_up_with_the_last_error_when_stopping_or_exhausted() -> None:
    async def attempt() -> None:
        raise ConnectionError("broker gone")

    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(ConnectionError):
        await retry("apply", attempt, RetryPolicy(1, 2), stopping=lambda: True, sleep=sleep)
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        await retry("send", counted, RetryPolicy(1, 2, max_attempts=3), sleep=sleep)
    assert calls == 3
