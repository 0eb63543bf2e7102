"""One weighted observation of a prometheus_client histogram, which has none of its own.

Why it exists: a batch's signatures share their accept-to-counted latency per millisecond
of receipt, so thousands of observations carry dozens of distinct values.  Observing
them one by one cost 1.2 s of a 17 s drain of 1,000,000 records; one weighted step per
value removed that (docs/benchmarks.md, tally, item 5; measured by ``python -m bench.tally``).

What it relies on: the private state of prometheus_client's ``Histogram`` (0.26), which
this module alone may touch: ``_sum`` and one ``_buckets`` counter per upper bound in
``_upper_bounds`` (not cumulative: the exposition sums them), each with ``inc``.
tests/tally/test_weighted_observe.py compares the exposition with repeated ``observe``,
so an upgrade that changes any of this fails there, not in production.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import Histogram


def observe_many(histogram: Histogram, amount: float, times: int) -> None:
    """``histogram.observe(amount)``, ``times`` times over, in one step.

    ``histogram`` has no labels, or is one labelled child (``.labels(...)``).  Nothing is
    observed when ``times`` is 0 or less.  Like ``observe``, ``amount`` lands in the first
    bucket whose bound is at least ``amount``.
    """
    if times <= 0:
        return
    histogram._sum.inc(amount * times)
    histogram._buckets[bisect_left(histogram._upper_bounds, amount)].inc(times)
