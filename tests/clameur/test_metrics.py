from __future__ import annotations

from prometheus_client import CollectorRegistry

from clameur.metrics import counter


def _series(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_every_combination_of_the_label_values_is_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    counter(registry, "clameur_test_events", "Events.", kind=("a", "b"), reason=("late", "lost"))
    assert _series(registry, "clameur_test_events_total") == {
        (("kind", kind), ("reason", reason)): 0.0 for kind in ("a", "b") for reason in ("late", "lost")
    }


def test_a_counter_without_labels_counts_as_a_plain_one() -> None:
    registry = CollectorRegistry()
    plain = counter(registry, "clameur_test_plain", "Plain.")
    plain.inc(2)
    assert _series(registry, "clameur_test_plain_total") == {(): 2.0}
