"""The BatchApplier contract (tests/clameur/applier_contract.py) over tally's PostgresCounterStore."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from tally.counter_store import PostgresCounterStore
from tally.counting import SignatureLogRecord
from tally.metrics import TallyMetrics

from tests.clameur.applier_contract import BatchApplierContract, Subject
from tests.tally.helpers import counters, many


class TestPostgresCounterStore(BatchApplierContract[SignatureLogRecord]):
    @pytest.fixture
    def subject(self, pool: asyncpg.Pool[Any], infra: Any, new_id: Any) -> Subject[SignatureLogRecord]:
        milestones = f"{new_id('topic')}.case-events"
        store = PostgresCounterStore(pool, TallyMetrics(CollectorRegistry()), milestones)

        def new_events(count: int) -> list[SignatureLogRecord]:
            # Each call a case of its own: "new to the applier" means new supporters and a
            # case whose counters start empty.
            return list(many(new_id("nawal"), count, tag=uuid.uuid4().hex[:8]))

        async def effect(events: Sequence[SignatureLogRecord]) -> Collection[Any]:
            kept: set[tuple[str, str, str, int]] = set()
            for case_id in sorted({getattr(event, "case_id", "") for event in events} - {""}):
                counts = await counters(infra.database_url, case_id)
                kept.update((case_id, dimension, key, count) for (dimension, key), count in counts.items())
            return kept

        return Subject(store, new_events, effect)
