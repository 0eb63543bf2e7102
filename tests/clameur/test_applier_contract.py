"""The BatchApplier contract over the in-memory applier (the Postgres ones: tests/tally, tests/notify)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

import pytest

from tests.clameur.applier_contract import BatchApplierContract, Subject
from tests.clameur.in_memory import InMemoryApplier


class TestInMemoryApplier(BatchApplierContract[bytes]):
    @pytest.fixture
    def subject(self) -> Subject[bytes]:
        applier: InMemoryApplier[bytes] = InMemoryApplier()

        def new_events(count: int) -> list[bytes]:
            tag = uuid.uuid4().hex
            return [f"signature {tag} {n}".encode() for n in range(count)]

        async def effect(events: Sequence[bytes]) -> Collection[tuple[str, int, int, bytes]]:
            wanted = set(events)
            return {(*key, event) for key, event in applier.store.effect.items() if event in wanted}

        return Subject(applier, new_events, effect)
