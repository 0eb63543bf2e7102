"""Tally's weighted histogram observation agrees with prometheus_client's own ``observe``."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram
from tally.metrics import observe_many

BUCKETS = (0.01, 0.1, 1.0, 10.0)


def samples(observations: list[tuple[float, int]], *, weighted: bool) -> dict[str, float]:
    """The histogram's exposed samples (``bucket:le``, ``count``, ``sum``) after the observations."""
    registry = CollectorRegistry()
    histogram = Histogram("latency_seconds", "A latency.", registry=registry, buckets=BUCKETS)
    for amount, times in observations:
        if weighted:
            observe_many(histogram, amount, times)
        else:
            for _ in range(times):
                histogram.observe(amount)
    exposed: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                exposed[f"bucket:{sample.labels['le']}"] = sample.value
            elif sample.name.endswith(("_count", "_sum")):
                exposed[sample.name.rsplit("_", 1)[1]] = sample.value
    return exposed


@pytest.mark.parametrize(
    "observations",
    [
        [(0.0, 3)],
        [(0.01, 2), (0.1, 5), (1.0, 1), (10.0, 4)],  # exactly on a bound: that bucket, like observe
        [(0.0100001, 7), (0.5, 1000), (42.0, 3)],  # between bounds, and above the last one
        [(0.25, 0), (3.0, 1)],  # nothing observed for a count of zero
    ],
)
def test_observe_many_matches_repeated_observe(observations: list[tuple[float, int]]) -> None:
    weighted = samples(observations, weighted=True)
    repeated = samples(observations, weighted=False)
    # Buckets and count exactly; the sum up to float rounding (a product against repeated sums).
    assert weighted.pop("sum") == pytest.approx(repeated.pop("sum"))
    assert weighted == repeated


def test_every_observation_is_counted() -> None:
    exposed = samples([(0.5, 1000), (42.0, 3)], weighted=True)
    assert exposed["bucket:0.1"] == 0
    assert exposed["bucket:1.0"] == 1000
    assert exposed["bucket:+Inf"] == 1003
    assert exposed["count"] == 1003
    assert exposed["sum"] == pytest.approx(500 + 126)
