"""Confirmation in the counter store, against a real Postgres: pending, confirmed once, rejected,
expired, erased, in log order and in the transaction that stores the offsets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from tally.counter_store import LogRun, PostgresCounterStore, log_segments
from tally.counting import InMemoryTally, SignatureLogRecord
from tally.expiry import PendingExpiry
from tally.metrics import TallyMetrics
from tally.reconcile import check_counters

from clameur.consumer import Batch, Consumed
from clameur.events import (
    Action,
    SignatureConfirmed,
    SignaturesRejected,
    SupporterErased,
)
from clameur.topics import Topics
from tests.support import metric
from tests.tally.helpers import counters, signature, supporter_key

_EXPIRY = timedelta(days=30)


def _batch(
    topic: str, records: Sequence[SignatureLogRecord], first_offset: int = 0
) -> Batch[SignatureLogRecord]:
    consumed: list[Consumed[SignatureLogRecord]] = [
        Consumed(record, 0, first_offset + n, 0) for n, record in enumerate(records)
    ]
    return Batch(topic, consumed, {0: first_offset + len(records)})


class _Tally:
    """A counter store, its metrics, and where the next batch of partition 0 starts."""

    def __init__(self, pool: asyncpg.Pool[Any], topics: Topics, database_url: str) -> None:
        self.pool = pool
        self.database_url = database_url
        self.registry = CollectorRegistry()
        self.metrics = TallyMetrics(self.registry)
        self.store = PostgresCounterStore(pool, self.metrics, topics.case_events, confirmation_expiry=_EXPIRY)
        self.topic = topics.signatures
        self.offset = 0

    async def apply(self, *records: SignatureLogRecord) -> None:
        await self.store.apply(_batch(self.topic, records, self.offset))
        self.offset += len(records)

    def metric(self, name: str) -> float:
        return metric(generate_latest(self.registry).decode(), name)

    def confirmed(self) -> float:
        return self.metric("clameur_tally_signatures_confirmed_total")

    async def counters(self, case_id: str) -> dict[tuple[str, str], int]:
        return await counters(self.database_url, case_id)

    async def no_drift(self, case_id: str) -> None:
        assert await check_counters(self.pool, cases=[case_id]) == []


@pytest.fixture
def case_id(new_id: Any) -> str:
    return str(new_id("nawal"))


@pytest.fixture
def tally(pool: asyncpg.Pool[Any], topics: Topics, infra: Any) -> _Tally:
    """This module's tally: a counter store alone (over the conftest's running service)."""
    return _Tally(pool, topics, infra.database_url)


def _counts(
    total: int | None = None,
    countries: dict[str, int] | None = None,
    actions: dict[str, int] | None = None,
    pending: int | None = None,
) -> dict[tuple[str, str], int]:
    """The rows ``counters`` reads for a case: only the dimensions given."""
    rows = {("total", ""): total} if total is not None else {}
    rows.update({("country", country): n for country, n in (countries or {}).items()})
    rows.update({("action", action): n for action, n in (actions or {}).items()})
    if pending is not None:
        rows[("pending", "")] = pending
    return rows


def _confirmed(case_id: str, email: str, at: datetime | None = None) -> SignatureConfirmed:
    return SignatureConfirmed(
        case_id=case_id, supporter_key=supporter_key(email), occurred_at=at or datetime.now(UTC)
    )


async def test_a_signature_awaiting_confirmation_is_pending_not_counted(tally: _Tally, case_id: str) -> None:
    await tally.apply(signature(case_id, "ada@example.org", awaits_confirmation=True))
    assert await tally.counters(case_id) == _counts(pending=1)
    state = await tally.pool.fetchval("SELECT state FROM tally.signatures WHERE case_id = $1", case_id)
    assert state == "pending"
    await tally.no_drift(case_id)


async def test_a_confirmation_counts_once_replayed_or_doubled(tally: _Tally, case_id: str) -> None:
    pending = [
        signature(case_id, "ada@example.org", awaits_confirmation=True),
        signature(case_id, "ada@example.org", action=Action.LETTER, country="FR", awaits_confirmation=True),
        signature(case_id, "bob@example.org", country="MA", awaits_confirmation=True),
    ]
    confirmation = _confirmed(case_id, "ada@example.org")
    await tally.apply(*pending)
    await tally.apply(confirmation, confirmation)  # doubled in one batch
    await tally.apply(confirmation)  # and again later
    await tally.store.apply(_batch(tally.topic, [confirmation], 3))  # a replay of the first
    # Proof the doubles and the replay were applied: every offset is stored, and the
    # store counted two signatures in all, the first time.
    assert await tally.store.stored_offsets(tally.topic, [0]) == {0: 6}
    assert tally.confirmed() == 2
    assert await tally.counters(case_id) == _counts(2, {"FR": 2}, {"signature": 1, "letter": 1}, pending=1)
    await tally.no_drift(case_id)


async def test_concurrent_confirmations_from_two_instances_count_once(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    first, second = _Tally(pool, topics, infra.database_url), _Tally(pool, topics, infra.database_url)
    await first.apply(*(signature(case_id, f"s{n}@example.org", awaits_confirmation=True) for n in range(20)))
    confirmations = [_confirmed(case_id, f"s{n}@example.org") for n in range(20)]
    # The same batch applied by two instances at once (a rebalance), each in its own transaction.
    await asyncio.gather(
        first.store.apply(_batch(first.topic, confirmations, 20)),
        second.store.apply(_batch(second.topic, confirmations, 20)),
    )
    # Proof both applied the confirmations: together they counted each signature once.
    assert first.confirmed() + second.confirmed() == 20
    found = await first.counters(case_id)
    assert found[("total", "")] == 20
    assert found[("pending", "")] == 0
    await first.no_drift(case_id)


async def test_the_order_of_the_log_holds_inside_a_batch(tally: _Tally, case_id: str) -> None:
    await tally.apply(
        signature(case_id, "ada@example.org", awaits_confirmation=True),
        _confirmed(case_id, "ada@example.org"),  # after its signature: counts it
        _confirmed(case_id, "bob@example.org"),  # before: bob's signature counts at once
        signature(case_id, "bob@example.org", country="MA", awaits_confirmation=True),
        signature(case_id, "eve@example.org", country="BE", awaits_confirmation=True),
    )
    assert await tally.counters(case_id) == _counts(2, {"FR": 1, "MA": 1}, {"signature": 2}, pending=1)
    await tally.no_drift(case_id)


async def test_a_rejection_drops_only_pending_signatures(tally: _Tally, case_id: str) -> None:
    await tally.apply(
        signature(case_id, "ada@example.org", awaits_confirmation=True),
        signature(case_id, "ada@example.org", action=Action.LETTER, awaits_confirmation=True),
        signature(case_id, "bob@example.org", awaits_confirmation=True),
        _confirmed(case_id, "bob@example.org"),
    )
    rejections = [
        SignaturesRejected(case_id=case_id, supporter_key=supporter_key(email))
        for email in ("ada@example.org", "bob@example.org")
    ]
    await tally.apply(*rejections)
    await tally.apply(*rejections)  # a replay drops nothing more
    assert tally.metric("clameur_tally_pending_rejected_total") == 2
    assert await tally.counters(case_id) == _counts(1, {"FR": 1}, {"signature": 1}, pending=0)
    await tally.no_drift(case_id)


async def test_expired_signatures_are_dropped_and_a_late_confirmation_counts_nothing(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    now = datetime.now(UTC)
    tally = _Tally(pool, topics, infra.database_url)
    await tally.apply(
        signature(case_id, "old@example.org", awaits_confirmation=True, received_at=now - timedelta(days=31)),
        signature(
            case_id, "late@example.org", awaits_confirmation=True, received_at=now - timedelta(days=31)
        ),
        signature(case_id, "new@example.org", awaits_confirmation=True, received_at=now - timedelta(days=29)),
    )
    # Without the job: a confirmation after the expiry counts nothing, by event times.
    await tally.apply(_confirmed(case_id, "late@example.org", now))
    assert (await tally.counters(case_id))[("pending", "")] == 3
    expiry = PendingExpiry(pool, tally.metrics, expiry=_EXPIRY, grace=timedelta(0), interval_s=60)
    assert await expiry.run_once(now) == 2
    assert await expiry.run_once(now) == 0
    assert tally.metric("clameur_tally_pending_expired_total") == 2
    await tally.apply(
        _confirmed(case_id, "old@example.org", now), _confirmed(case_id, "new@example.org", now)
    )
    assert tally.confirmed() == 1
    assert await tally.counters(case_id) == _counts(1, {"FR": 1}, {"signature": 1}, pending=0)
    await tally.no_drift(case_id)


async def test_an_erased_supporter_is_re_keyed_and_still_counts(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    cases = [new_id("nawal"), new_id("atena")]
    email = f"{new_id('ada')}@example.org"  # the erasure reaches every case of the database
    key = supporter_key(email)
    tally = _Tally(pool, topics, infra.database_url)
    await tally.apply(
        *(signature(case_id, email) for case_id in cases),
        signature(cases[0], email, action=Action.LETTER, awaits_confirmation=True),
        signature(cases[0], "bob@example.org"),
    )
    before = [await tally.counters(case_id) for case_id in cases]
    domains = (
        "SELECT count(*) FROM tally.signatures WHERE case_id = ANY($1::text[]) AND email_domain IS NOT NULL"
    )
    assert await pool.fetchval(domains, cases) == 4  # proof the domains were stored before the erasure
    erasure = SupporterErased(erasure_id=uuid4(), supporter_key=key)
    await tally.apply(erasure)
    await tally.apply(erasure)  # it comes once per partition: the second finds nothing
    assert tally.metric("clameur_tally_signatures_erased_total") == 3
    assert await pool.fetchval("SELECT count(*) FROM tally.signatures WHERE supporter_key = $1", key) == 0
    markers = await pool.fetch(
        "SELECT supporter_key FROM tally.signatures WHERE case_id = ANY($1::text[]) "
        "AND supporter_key LIKE 'erased:%'",
        cases,
    )
    assert len({row["supporter_key"] for row in markers}) == 3  # unlinkable, even to each other
    # A domain only one supporter uses would name them: the erased rows keep none; bob's stays.
    assert await pool.fetchval(domains, cases) == 1
    assert [await tally.counters(case_id) for case_id in cases] == before
    for case_id in cases:
        await tally.no_drift(case_id)


def test_the_in_memory_fold_follows_the_same_rules() -> None:
    now = datetime.now(UTC)
    tally = InMemoryTally(expiry=_EXPIRY)
    tally.apply(
        [
            signature("c", "ada@example.org", awaits_confirmation=True),
            _confirmed("c", "ada@example.org", now),
            _confirmed("c", "ada@example.org", now),
            signature("c", "old@example.org", awaits_confirmation=True, received_at=now - timedelta(days=31)),
            _confirmed("c", "old@example.org", now),
            signature("c", "bob@example.org", awaits_confirmation=True),
            SignaturesRejected(case_id="c", supporter_key=supporter_key("bob@example.org")),
            _confirmed("c", "bob@example.org", now),
            SupporterErased(erasure_id=uuid4(), supporter_key=supporter_key("ada@example.org")),
        ]
    )
    assert dict(tally.as_mapping()) == {
        ("c", "total", ""): 1,
        ("c", "country", "FR"): 1,
        ("c", "action", "signature"): 1,
    }
    assert not any(key.supporter_key == supporter_key("ada@example.org") for key in tally.counted)


def _interleaved(case_id: str, now: datetime) -> list[SignatureLogRecord]:
    """A batch as the bench makes it: signatures and the confirmations of earlier signers mixed,
    with the rare orders a run must not reorder."""
    records: list[SignatureLogRecord] = []
    for n in range(300):
        records.append(signature(case_id, f"s{n}@example.org", country="MA", awaits_confirmation=True))
        if n >= 10 and n % 3:
            records.append(_confirmed(case_id, f"s{n - 10}@example.org"))
    # A supporter confirmed, then another action of theirs in the same batch: counted at once.
    records.append(_confirmed(case_id, "s299@example.org"))
    records.append(signature(case_id, "s299@example.org", action=Action.LETTER, awaits_confirmation=True))
    # Confirmed twice, the later one first in the log: the earlier one's expiry window counts.
    records.append(
        signature(
            case_id,
            "old@example.org",
            awaits_confirmation=True,
            received_at=now - timedelta(days=30, hours=12),
        )
    )
    records.append(_confirmed(case_id, "old@example.org", now))
    records.append(_confirmed(case_id, "old@example.org", now - timedelta(days=1)))
    # Confirmed first, then a signature received long before: log order counts it (the insert
    # finds the supporter confirmed); confirming after it would not (it is past the expiry).
    records.append(_confirmed(case_id, "early@example.org", now))
    records.append(
        signature(
            case_id, "early@example.org", awaits_confirmation=True, received_at=now - timedelta(days=40)
        )
    )
    return records


async def test_a_batch_of_signatures_and_confirmations_mixed_counts_as_the_log_says(
    tally: _Tally, case_id: str
) -> None:
    now = datetime.now(UTC)
    records = _interleaved(case_id, now)
    reference = InMemoryTally(expiry=_EXPIRY)
    reference.apply(records)
    await tally.apply(*records)
    await tally.apply(*records)  # a replay of the whole batch adds nothing
    expected = {(key.dimension, key.key): count for key, count in reference.as_mapping().items()}
    expected[("pending", "")] = sum(len(waiting) for waiting in reference.pending.values())
    # Proof the rare orders happened: s299's letter, old's and early's signatures counted.
    assert expected[("action", "letter")] == 1
    assert expected[("country", "FR")] == 3
    assert await tally.counters(case_id) == expected
    assert tally.confirmed() == expected[("total", "")] - 2  # early and s299's letter counted at insert
    # Each signature a confirmation counted has its latency from the click.
    assert tally.metric("clameur_tally_confirmation_to_counted_seconds_count") == tally.confirmed()
    await tally.no_drift(case_id)


def test_confirmations_among_signatures_do_not_split_the_batch() -> None:
    now = datetime.now(UTC)
    records = _interleaved("c", now)
    _, segments = log_segments(records)
    # One statement per run, not one per confirmation: the batch is three runs (s299's letter
    # and early's signature each follow a confirmation of their supporter, so start a run).
    assert [type(segment) for segment in segments] == [LogRun] * 3
    runs = [segment for segment in segments if isinstance(segment, LogRun)]
    assert sum(len(run.confirmations) for run in runs) == sum(
        1 for record in records if isinstance(record, SignatureConfirmed)
    )
    assert [(run.first, run.end) for run in runs] == [
        (0, runs[1].first),
        (runs[1].first, runs[2].first),
        (runs[2].first, len(records)),
    ]
