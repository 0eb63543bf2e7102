"""Notify's stored offsets against a real Postgres: one row set per consumer group, never rewound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from notify.ledger import CaseNewsApplier, SupporterListApplier

from clameur.consumer import Batch
from clameur.topics import Topics


async def test_each_group_keeps_its_own_offsets_and_they_never_move_backwards(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Callable[..., str]
) -> None:
    supporters = SupporterListApplier(pool, new_id("supporters"))
    news = CaseNewsApplier(pool, new_id("news"))
    other_news = CaseNewsApplier(pool, new_id("news"))

    await supporters.apply(Batch(topics.signatures, [], {0: 7, 2: 105}))
    await supporters.apply(Batch(topics.signatures, [], {2: 10}))  # a late replay of an older batch
    await news.apply(Batch(topics.case_events, [], {0: 3}))

    assert await supporters.stored_offsets(topics.signatures, [0, 1, 2]) == {0: 7, 2: 105}
    assert await supporters.stored_offsets(topics.case_events, [0]) == {}
    assert await news.stored_offsets(topics.case_events, [0, 1]) == {0: 3}
    assert await other_news.stored_offsets(topics.case_events, [0, 1]) == {}
