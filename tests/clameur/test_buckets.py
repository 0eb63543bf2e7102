"""Token buckets (shared by intake's rate limits and the admin guard), on a clock the test moves."""

from __future__ import annotations

import pytest

from clameur.buckets import RateLimit, TokenBuckets, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_sustained_rate_applies() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=3, per_second=0.5), clock=clock, max_keys=100)
    assert [buckets.take("203.0.113.9") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("203.0.113.9")
    assert wait == pytest.approx(2.0)
    assert retry_after(wait) == "2"
    clock.now += 2.0
    assert buckets.take("203.0.113.9") == 0.0
    assert buckets.take("203.0.113.9") > 0
    # Another client has its own bucket.
    assert buckets.take("198.51.100.7") == 0.0


def test_a_refused_request_does_not_cost_a_token() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=1, per_second=1.0), clock=clock, max_keys=100)
    assert buckets.take("a") == 0.0
    for _ in range(5):
        assert buckets.take("a") > 0
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=2, per_second=10.0), clock=clock, max_keys=100)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_memory_is_bounded_by_forgetting_the_least_recent_client() -> None:
    buckets = TokenBuckets(RateLimit(burst=1, per_second=0.001), clock=Clock(), max_keys=3)
    for client in ("a", "b", "c", "d"):
        buckets.take(client)
    assert len(buckets) == 3
    assert buckets.take("a") == 0.0  # forgotten, so a full bucket again
    assert buckets.take("d") > 0


def test_a_burst_of_zero_turns_the_limit_off() -> None:
    buckets = TokenBuckets(RateLimit(burst=0, per_second=1.0), clock=Clock(), max_keys=10)
    assert all(buckets.take("a") == 0.0 for _ in range(1000))
    assert len(buckets) == 0


def test_waiting_is_told_without_taking_a_token() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=2, per_second=0.5), clock=clock, max_keys=100)
    assert buckets.wait("a") == 0.0  # unknown: a full bucket
    buckets.take("a")
    assert [buckets.wait("a") for _ in range(3)] == [0.0] * 3  # asking costs nothing
    buckets.take("a")
    assert buckets.wait("a") == pytest.approx(2.0)
    clock.now += 2.0
    assert buckets.wait("a") == 0.0
    assert buckets.take("a") == 0.0
