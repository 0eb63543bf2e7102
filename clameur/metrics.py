"""Declaring Prometheus metrics the one way the services do."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter


def counter(registry: CollectorRegistry, name: str, documentation: str, **series: Sequence[str]) -> Counter:
    """A counter on ``registry``, labelled by the names of ``series``.

    Every combination of the label values given is created at zero at once, so a
    dashboard has a line to draw (and a rate to compute) before the first event.
    """
    made = Counter(name, documentation, list(series), registry=registry)
    if series:
        for values in itertools.product(*series.values()):
            made.labels(*values)
    return made
