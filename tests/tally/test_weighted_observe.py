"""``observe_many`` agrees with prometheus_client's own ``observe``, repeated.

These tests pin what tally.weighted_observe relies on in prometheus_client's private
state: an upgrade that changes it fails here.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from tally.weighted_observe import observe_many

BUCKETS = (0.01, 0.1, 1.0, 10.0)

Observations = list[tuple[float, int]]


def samples(observations: Observations, *, weighted: bool, labelled: bool = False) -> dict[str, float]:
    """The histogram's exposed samples (``bucket:le``, ``count``, ``sum``) after the observations."""
    registry = CollectorRegistry()
    labels = ["action"] if labelled else []
    parent = Histogram("latency_seconds", "A latency.", labels, registry=registry, buckets=BUCKETS)
    histogram = parent.labels("signature") if labelled else parent
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


def assert_same(weighted: dict[str, float], repeated: dict[str, float]) -> None:
    # Buckets and count exactly; the sum up to float rounding (a product against repeated sums).
    assert weighted.pop("sum") == pytest.approx(repeated.pop("sum"))
    assert weighted == repeated


@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled child"])
@pytest.mark.parametrize(
    "observations",
    [
        [(0.0, 3)],
        [(0.01, 2), (0.1, 5), (1.0, 1), (10.0, 4)],  # exactly on a bound: that bucket, like observe
        [(0.0100001, 7), (0.5, 1000), (42.0, 3)],  # between bounds, and above the last one
        [(0.25, 0), (3.0, 1)],  # nothing observed for a count of zero
        [(0.25, -2), (3.0, 1)],  # nor for a negative one
    ],
)
def test_observe_many_matches_repeated_observe(observations: Observations, labelled: bool) -> None:
    assert_same(
        samples(observations, weighted=True, labelled=labelled),
        samples(observations, weighted=False, labelled=labelled),
    )


@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(BUCKETS), st.floats(min_value=0.0, max_value=100.0)),
            st.integers(min_value=0, max_value=50),
        ),
        max_size=20,
    )
)
def test_any_observations_match_repeated_observe(observations: Observations) -> None:
    assert_same(samples(observations, weighted=True), samples(observations, weighted=False))


def test_weighted_and_plain_observations_add_up_on_one_histogram() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("latency_seconds", "A latency.", registry=registry, buckets=BUCKETS)
    histogram.observe(0.05)
    observe_many(histogram, 0.05, 4)
    histogram.observe(20.0)
    assert registry.get_sample_value("latency_seconds_bucket", {"le": "0.1"}) == 5
    assert registry.get_sample_value("latency_seconds_bucket", {"le": "+Inf"}) == 6
    assert registry.get_sample_value("latency_seconds_count") == 6
    assert registry.get_sample_value("latency_seconds_sum") == pytest.approx(20.25)


def test_every_observation_is_counted() -> None:
    exposed = samples([(0.5, 1000), (42.0, 3)], weighted=True)
    assert exposed["bucket:0.1"] == 0
    assert exposed["bucket:1.0"] == 1000
    assert exposed["bucket:+Inf"] == 1003
    assert exposed["count"] == 1003
    assert exposed["sum"] == pytest.approx(500 + 126)
