"""The BatchApplier contract (tests/clameur/applier_contract.py) over notify's two appliers."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
import pytest
from notify.ledger import CaseNewsApplier, SupporterListApplier

from clameur.events import CaseEvent, SignatureAccepted, SignatureLogEvent
from tests.clameur.applier_contract import BatchApplierContract, Subject
from tests.notify.conftest import milestone, signature


class TestSupporterListApplier(BatchApplierContract[SignatureLogEvent]):
    @pytest.fixture
    def subject(self, pool: asyncpg.Pool[Any], new_id: Any) -> Subject[SignatureLogEvent]:
        applier = SupporterListApplier(pool, new_id("notify-supporters"))

        def new_events(count: int) -> list[SignatureLogEvent]:
            case_id = new_id("nawal")
            return [signature(case_id, f"supporter{n}") for n in range(count)]

        async def effect(events: Sequence[SignatureLogEvent]) -> Collection[Any]:
            keys = sorted({e.supporter_key for e in events if isinstance(e, SignatureAccepted)})
            subscriptions = await pool.fetch(
                "SELECT case_id, supporter_key, wants_updates, confirmed_at FROM notify.subscriptions"
                " WHERE supporter_key = ANY($1::text[])",
                keys,
            )
            return {tuple(row) for row in subscriptions}

        return Subject(applier, new_events, effect)


class TestCaseNewsApplier(BatchApplierContract[CaseEvent]):
    @pytest.fixture
    def subject(self, pool: asyncpg.Pool[Any], new_id: Any) -> Subject[CaseEvent]:
        applier = CaseNewsApplier(pool, new_id("notify-news"))

        def new_events(count: int) -> list[CaseEvent]:
            case_id = new_id("nawal")
            return [milestone(case_id, threshold=10_000 * (n + 1)) for n in range(count)]

        async def effect(events: Sequence[CaseEvent]) -> Collection[Any]:
            rows = await pool.fetch(
                "SELECT event_id, case_id, kind FROM notify.case_events WHERE event_id = ANY($1::uuid[])",
                [event.event_id for event in events],
            )
            return {tuple(row) for row in rows}

        return Subject(applier, new_events, effect)
