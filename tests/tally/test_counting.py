"""The pure fold: which records count, what a batch adds, which milestones it crosses."""

from __future__ import annotations

import itertools

import pytest
from tally.counting import (
    CaseCounts,
    CounterKey,
    Drift,
    InMemoryTally,
    case_counts,
    counted,
    counter_deltas,
    decode_countable,
    drift,
    first_of_each,
    milestones_crossed,
)

from clameur.events import Action
from tests.tally.helpers import signature


def test_deltas_add_each_signature_to_its_total_country_and_action() -> None:
    batch = [
        signature("nawal", "a@example.org", country="FR"),
        signature("nawal", "b@example.org", country="MA", action=Action.LETTER),
        signature("nawal", "c@example.org", country="FR"),
        signature("other", "a@example.org", country="BE"),
    ]
    assert counter_deltas(batch) == {
        CounterKey("nawal", "total", ""): 3,
        CounterKey("nawal", "country", "FR"): 2,
        CounterKey("nawal", "country", "MA"): 1,
        CounterKey("nawal", "action", "signature"): 2,
        CounterKey("nawal", "action", "letter"): 1,
        CounterKey("other", "total", ""): 1,
        CounterKey("other", "country", "BE"): 1,
        CounterKey("other", "action", "signature"): 1,
    }


def test_the_same_supporter_twice_in_a_batch_is_one_candidate_the_first() -> None:
    first = signature("nawal", "Ada@Example.org", country="FR")
    again = signature("nawal", "  ada@example.ORG ", country="MA")
    letter = signature("nawal", "ada@example.org", action=Action.LETTER)
    kept = first_of_each([first, again, letter])
    assert list(kept.values()) == [first, letter]


@pytest.mark.parametrize(
    ("before", "after", "crossed"),
    [
        (0, 9_999, []),
        (9_999, 10_000, [10_000]),  # reaching a threshold exactly crosses it
        (10_000, 10_001, []),  # already crossed by the batch that reached it
        (9_000, 60_000, [10_000, 50_000]),
        (0, 1_000_000, [10_000, 50_000, 100_000, 250_000]),
        (5, 5, []),
    ],
)
def test_milestones_crossed_are_those_in_before_exclusive_after_inclusive(
    before: int, after: int, crossed: list[int]
) -> None:
    assert milestones_crossed(before, after, [250_000, 10_000, 100_000, 50_000]) == crossed


def test_consecutive_intervals_cross_each_threshold_once() -> None:
    totals = [0, 3, 9, 10, 11, 20, 31]
    crossed = [
        t
        for before, after in itertools.pairwise(totals)
        for t in milestones_crossed(before, after, [10, 20, 30])
    ]
    assert crossed == [10, 20, 30]


def test_in_memory_tally_counts_each_supporter_once_across_batches() -> None:
    tally = InMemoryTally()
    first = tally.add([signature("nawal", "a@example.org"), signature("nawal", "b@example.org")])
    replay = tally.add([signature("nawal", "A@example.org "), signature("nawal", "c@example.org")])
    assert len(first) == 2
    assert [s.supporter_key for s in replay] == [signature("nawal", "c@example.org").supporter_key]
    assert tally.as_mapping()[CounterKey("nawal", "total", "")] == 3


def test_case_counts_fold_counter_rows() -> None:
    counts = case_counts(
        [("country", "MA", 2), ("total", "", 5), ("action", "signature", 5), ("country", "FR", 3)]
    )
    assert counts == CaseCounts(5, {"FR": 3, "MA": 2}, {"signature": 5})
    assert list(counts.by_country) == ["FR", "MA"]


def test_drift_lists_counters_that_differ_missing_ones_being_zero() -> None:
    total = CounterKey("nawal", "total", "")
    france = CounterKey("nawal", "country", "FR")
    morocco = CounterKey("nawal", "country", "MA")
    found = drift({total: 5, france: 5, morocco: 0}, {total: 6, france: 5, morocco: 1})
    assert found == [Drift(morocco, 0, 1), Drift(total, 5, 6)]
    assert drift({total: 1}, {total: 1}) == []


def test_a_good_record_decodes() -> None:
    event = signature("nawal", "a@example.org")
    assert decode_countable(event.to_json()) == counted(event)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        signature("nawal", "a@example.org").to_json().replace(b'"FR"', b'"fr"'),
        signature("nawal", "a@example.org").to_json().replace(b'"FR"', b'"FRA"'),
        signature("nawal", "a@example.org").to_json().replace(b'"nawal"', b'"Nawal Case"'),
        signature("nawal", "a@example.org")
        .to_json()
        .replace(b'"action":"signature"', b'"action":"petition"'),
    ],
)
def test_poison_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_countable(raw)
