"""Invalidations applied in the batch transaction, against a real Postgres: exact, replayable, once."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from tally import invalidations
from tally.case_store import PostgresCaseStore
from tally.cases import CaseCreate, new_case
from tally.counter_store import OFFSETS, PostgresCounterStore
from tally.counting import CounterKey, InMemoryTally
from tally.invalidations import (
    SUPPORTERS_PER_EVENT,
    InMemoryInvalidations,
    counter_deltas,
    facts_of,
    filter_predicate,
    is_empty,
    supporter_chunks,
)
from tally.metrics import TallyMetrics
from tally.reconcile import check_counters

from clameur.events import (
    Action,
    InvalidationFilter,
    InvalidationRequested,
    SignatureAccepted,
    SignatureConfirmed,
    SupporterErased,
)
from clameur.topics import Topics
from tests.tally.helpers import case_body, counters, supporter_key
from tests.tally.invalidation_support import (
    batch,
    bot_wave,
    expected_counts,
    nonzero,
    outbox_events,
    people,
    requested,
    revoked,
    signed,
)

BOTS = InvalidationFilter(email_domains=("bot-farm.example",))


@pytest.fixture
async def case_id(pool: asyncpg.Pool[Any], topics: Topics, new_id: Any) -> str:
    """A case of its own, created in tally without milestones."""
    created: str = new_id("nawal")
    await _create(pool, topics, created, [])
    return created


def _store(pool: asyncpg.Pool[Any], topics: Topics) -> PostgresCounterStore:
    return PostgresCounterStore(pool, TallyMetrics(CollectorRegistry()), topics.case_events)


async def _create(pool: asyncpg.Pool[Any], topics: Topics, case_id: str, milestones: list[int]) -> None:
    request = CaseCreate.model_validate(case_body(case_id, milestones=milestones))
    await PostgresCaseStore(pool, topics).create(new_case(request, datetime.now(UTC)))


# -- the pure parts --------------------------------------------------------------------------------


def test_an_empty_filter_matches_nothing_and_each_field_is_a_parameter() -> None:
    assert is_empty(InvalidationFilter())
    assert filter_predicate(InvalidationFilter(), 3) == ("FALSE", [])
    since = datetime(2026, 11, 1, tzinfo=UTC)
    condition, parameters = filter_predicate(
        InvalidationFilter(
            email_domains=("x.example",), received_from=since, page_url_prefix="https://a/'--"
        ),
        3,
    )
    assert condition == "email_domain = ANY($3::text[]) AND received_at >= $4 AND starts_with(page_url, $5)"
    assert parameters == [["x.example"], since, "https://a/'--"]  # the text never enters the SQL


def test_supporters_go_to_notify_in_chunks_of_a_thousand_distinct_keys() -> None:
    keys = [f"k{n:05}" for n in range(2500)] + ["k00001"]
    chunks = supporter_chunks(keys)
    assert [len(chunk) for chunk in chunks] == [SUPPORTERS_PER_EVENT, SUPPORTERS_PER_EVENT, 500]
    assert [key for chunk in chunks for key in chunk] == sorted(set(keys))


# -- against Postgres ------------------------------------------------------------------------------


async def test_the_dry_run_and_the_real_run_agree_counts_drop_exactly_and_a_restore_gives_them_back(
    pool: asyncpg.Pool[Any], topics: Topics, case_id: str, infra: Any
) -> None:
    store = _store(pool, topics)
    bots, humans = bot_wave(case_id, 40), people(case_id, 25)
    await store.apply(batch(topics.signatures, [*humans[:10], *bots, *humans[10:]]))
    assert await counters(infra.database_url, case_id) == expected_counts([*bots, *humans])

    dry = await invalidations.dry_run(pool, case_id, BOTS)
    assert dry.document() == {
        "matched": 40,
        "by_country": {"BE": 13, "FR": 14, "MA": 13},
        "by_action": {"letter": 20, "signature": 20},
    }
    assert await counters(infra.database_url, case_id) == expected_counts([*bots, *humans])  # unchanged

    invalidation = requested(case_id, BOTS)
    await store.apply(batch(topics.signatures, [invalidation], first_offset=65))
    assert nonzero(await counters(infra.database_url, case_id)) == expected_counts(humans)
    document = await invalidations.applied(pool, case_id, invalidation.invalidation_id)
    assert document is not None
    assert {k: document[k] for k in ("matched", "by_country", "by_action")} == dry.document()
    assert (document["reason"], document["by"], document["filter"]) == (
        "bot wave",
        "admin",
        {"email_domains": ["bot-farm.example"]},
    )
    taken = await outbox_events(pool, topics.case_events, case_id, "SupportersInvalidated")
    assert sorted(taken[0]["supporter_keys"]) == sorted(s.supporter_key for s in bots)
    assert (await invalidations.dry_run(pool, case_id, BOTS)).matched == 0  # nothing left to take
    assert await check_counters(pool, cases=[case_id]) == []  # reconcile leaves the invalidated out

    await store.apply(batch(topics.signatures, [revoked(invalidation)], first_offset=66))
    assert await counters(infra.database_url, case_id) == expected_counts([*bots, *humans])
    document = await invalidations.applied(pool, case_id, invalidation.invalidation_id)
    assert (
        document is not None and document["restored"] == dry.document() and document["revoked_by"] == "admin"
    )
    given_back = await outbox_events(pool, topics.case_events, case_id, "SupportersRestored")
    assert sorted(given_back[0]["supporter_keys"]) == sorted(s.supporter_key for s in bots)


async def test_an_invalidation_takes_what_the_log_holds_before_it_and_a_replay_takes_the_same(
    pool: asyncpg.Pool[Any], topics: Topics, case_id: str, infra: Any
) -> None:
    """Bots signing after the invalidation in the log are not taken; a replay of the same
    batches, twice over the stored state or from offset 0 into an empty state, agrees."""
    store = _store(pool, topics)
    early, late = bot_wave(case_id, 30), bot_wave(case_id, 60)[30:]
    invalidation = requested(case_id, BOTS)
    humans = people(case_id, 12)
    log = [*early, *humans[:6], invalidation, *late, *humans[6:]]
    batches = [batch(topics.signatures, log[:20]), batch(topics.signatures, log[20:], first_offset=20)]
    for each in batches:
        await store.apply(each)
    first = await counters(infra.database_url, case_id)
    assert nonzero(first) == expected_counts([*humans, *late])
    matched = (await invalidations.applied(pool, case_id, invalidation.invalidation_id) or {})["matched"]
    assert matched == 30

    for each in batches:  # the same batches again: a redelivery after a crash
        await store.apply(each)
    assert await counters(infra.database_url, case_id) == first

    # From offset 0 into an empty state: what a new database (or a rebuild) would do.
    async with pool.acquire() as connection:
        for table in ("signatures", "counters", "invalidations"):
            await connection.execute(f"DELETE FROM tally.{table} WHERE case_id = $1", case_id)
        await connection.execute("DELETE FROM tally.offsets WHERE topic = $1", topics.signatures)
    assert await counters(infra.database_url, case_id) == {}  # the replay starts from nothing
    for each in batches:
        await store.apply(each)
    assert await counters(infra.database_url, case_id) == first
    again = await invalidations.applied(pool, case_id, invalidation.invalidation_id)
    assert again is not None and again["matched"] == 30
    assert await OFFSETS.read(pool, topics.signatures, [0]) == {0: len(log)}


async def test_a_milestone_is_announced_once_though_the_total_falls_below_it_and_crosses_it_again(
    pool: asyncpg.Pool[Any], topics: Topics, new_id: Any, infra: Any
) -> None:
    case_id = new_id("nawal")
    await _create(pool, topics, case_id, [10, 40])
    store = _store(pool, topics)
    bots = bot_wave(case_id, 6)
    await store.apply(batch(topics.signatures, [*people(case_id, 6), *bots]))  # 12: crosses 10
    assert [
        e["threshold"] for e in await outbox_events(pool, topics.case_events, case_id, "MilestoneReached")
    ] == [10]

    invalidation = requested(case_id, BOTS)
    await store.apply(batch(topics.signatures, [invalidation], first_offset=12))
    assert (await counters(infra.database_url, case_id))[("total", "")] == 6  # fell below 10
    await store.apply(batch(topics.signatures, people(case_id, 5, tag="b"), first_offset=13))
    assert (await counters(infra.database_url, case_id))[("total", "")] == 11  # crossed 10 again
    await store.apply(batch(topics.signatures, [revoked(invalidation)], first_offset=18))
    assert (await counters(infra.database_url, case_id))[("total", "")] == 17  # restored, 10 passed once more

    announced = await outbox_events(pool, topics.case_events, case_id, "MilestoneReached")
    assert [e["threshold"] for e in announced] == [10]  # once, whatever the total did


async def test_overlapping_invalidations_take_a_row_once_and_a_revocation_hands_it_to_the_later_one(
    pool: asyncpg.Pool[Any], topics: Topics, case_id: str, infra: Any
) -> None:
    store = _store(pool, topics)
    bots, humans = bot_wave(case_id, 30), people(case_id, 20)  # bots: FR/MA/BE; humans: FR/SN
    await store.apply(batch(topics.signatures, [*bots, *humans]))
    domain = requested(case_id, BOTS)
    french = requested(case_id, InvalidationFilter(countries=("FR",)), reason="one widget's French wave")
    await store.apply(batch(topics.signatures, [domain, french], first_offset=50))
    french_bots = [s for s in bots if s.country == "FR"]
    french_humans = [s for s in humans if s.country == "FR"]
    counted = [s for s in humans if s.country != "FR"]
    assert nonzero(await counters(infra.database_url, case_id)) == expected_counts(counted)
    second = await invalidations.applied(pool, case_id, french.invalidation_id)
    assert second is not None and second["matched"] == len(french_humans)  # the bots were taken already

    await store.apply(batch(topics.signatures, [revoked(domain)], first_offset=52))
    # The French bots stay out (the later invalidation matches them); the others come back.
    assert nonzero(await counters(infra.database_url, case_id)) == expected_counts(
        [*counted, *(s for s in bots if s.country != "FR")]
    )
    restored_keys = (await outbox_events(pool, topics.case_events, case_id, "SupportersRestored"))[0]
    assert set(restored_keys["supporter_keys"]) == {s.supporter_key for s in bots if s.country != "FR"}

    await store.apply(batch(topics.signatures, [revoked(french)], first_offset=53))
    assert await counters(infra.database_url, case_id) == expected_counts([*bots, *humans])
    assert await check_counters(pool, cases=[case_id]) == []
    last = await invalidations.applied(pool, case_id, french.invalidation_id)
    assert last is not None and last["restored"]["matched"] == len(french_bots) + len(french_humans)


async def test_every_filter_field_narrows_and_emails_match_by_their_canonical_key(
    pool: asyncpg.Pool[Any], topics: Topics, case_id: str
) -> None:
    now = datetime.now(UTC)
    signatures = [
        signed(case_id, "abc@gmail.com", received_at=now - timedelta(hours=2)),
        signed(
            case_id, "x@example.org", widget="w-x", partner="amnesty", received_at=now - timedelta(hours=1)
        ),
        signed(case_id, "y@example.org", page_url="https://spam.example/a", country="MA", received_at=now),
        signed(case_id, "z@example.org", action=Action.LETTER, partner="hrw", received_at=now),
    ]
    await _store(pool, topics).apply(batch(topics.signatures, signatures))

    async def matched(**fields: Any) -> int:
        return (await invalidations.dry_run(pool, case_id, InvalidationFilter(**fields))).matched

    assert await matched(supporter_keys=(supporter_key("a.b.c+petition@googlemail.com"),)) == 1
    assert await matched(widget_keys=("w-x",)) == 1
    assert await matched(partners=("amnesty", "hrw")) == 2
    assert await matched(partners=("amnesty", "hrw"), countries=("FR",)) == 2
    assert await matched(partners=("hrw",), countries=("MA",)) == 0  # every field must match
    assert await matched(page_url_prefix="https://spam.example/") == 1
    assert await matched(received_from=now - timedelta(minutes=90)) == 3
    assert await matched(received_from=now - timedelta(minutes=90), received_until=now) == 1  # half-open
    assert await matched(email_domains=("example.org",), countries=("MA",)) == 1


def _random_filter(rng: random.Random, start: datetime) -> InvalidationFilter:
    choices: dict[str, Any] = {
        "email_domains": tuple(rng.sample(["a.example", "b.example", "c.example"], rng.randint(1, 2))),
        "countries": tuple(rng.sample(["FR", "MA", "BE"], rng.randint(1, 2))),
        "widget_keys": (rng.choice(["w1", "w2"]),),
        "partners": (rng.choice(["amnesty", "hrw"]),),
        "page_url_prefix": rng.choice(["https://p.example/", "https://p.example/nawal", "https://q.example"]),
        "received_from": start + timedelta(seconds=rng.randint(0, 40)),
        "received_until": start + timedelta(seconds=rng.randint(20, 60)),
    }
    names = rng.sample(sorted(choices), rng.randint(1, 2))
    return InvalidationFilter(**{name: choices[name] for name in names})


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_sql_and_the_in_memory_twin_agree_on_random_logs(
    seed: int, pool: asyncpg.Pool[Any], topics: Topics, case_id: str, infra: Any
) -> None:
    """The rebuild's twin (:class:`InMemoryInvalidations`) and the SQL apply, on the same log:
    overlapping filters, revocations in any order, replayed requests and duplicate signatures."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    log: list[Any] = []
    requests: list[InvalidationRequested] = []
    for n in range(200):
        if n % 20 == 19:
            requests.append(requested(case_id, _random_filter(rng, start)))
            log.append(requests[-1])
        elif n % 30 == 29 and requests:
            log.append(revoked(rng.choice(requests)))
        else:
            log.append(
                signed(
                    case_id,
                    f"s{rng.randint(0, 120)}@{rng.choice(['a.example', 'b.example', 'c.example'])}",
                    country=rng.choice(["FR", "MA", "BE"]),
                    action=rng.choice([Action.SIGNATURE, Action.LETTER]),
                    widget=rng.choice(["w1", "w2"]),
                    partner=rng.choice([None, "amnesty", "hrw"]),
                    page_url=rng.choice(["https://p.example/nawal", "https://q.example/x"]),
                    received_at=start + timedelta(seconds=rng.randint(0, 60)),
                )
            )
    log.append(requests[0])  # a request delivered twice

    store, twin, expected = _store(pool, topics), InMemoryInvalidations(), Counter[CounterKey]()
    offset = 0
    while offset < len(log):
        size = rng.randint(1, 25)
        await store.apply(batch(topics.signatures, log[offset : offset + size], first_offset=offset))
        offset += size
    for event in log:
        if isinstance(event, SignatureAccepted):
            key = (event.case_id, event.supporter_key, event.action.value)
            if key not in twin.signatures:
                twin.counted(facts_of(event))
                expected.update(counter_deltas(case_id, [(event.country, event.action.value, 1)], 1))
        else:
            expected.update(twin.apply(event))
    stored = await counters(infra.database_url, case_id)
    assert nonzero(stored) == {(k.dimension, k.key): n for k, n in expected.items() if n}
    assert len(twin.held) > 0 and stored[("total", "")] < len(twin.signatures)  # some are out


def test_the_rebuilds_one_fold_applies_invalidations_among_confirmations_and_erasures() -> None:
    """InMemoryTally folds invalidations at their place in the log: a signature confirmed
    after an invalidation is not taken, an erased supporter loses the domain a successor's
    filter would match, and a revocation gives back exactly what no later one holds."""
    first = requested("c", InvalidationFilter(email_domains=("bot-farm.example",)))
    second = requested("c", InvalidationFilter(email_domains=("bot-farm.example",)))
    bots = [signed("c", f"bot{n}@bot-farm.example") for n in range(4)]
    late = bots[3].model_copy(update={"awaits_confirmation": True})
    tally = InMemoryTally()
    tally.apply([*bots[:3], late, first])
    assert tally.as_mapping() == {}  # the three counted bots taken out; the pending one waits
    tally.apply(
        [
            SignatureConfirmed(case_id="c", supporter_key=late.supporter_key),  # counted after `first`
            SupporterErased(erasure_id=uuid.uuid4(), supporter_key=bots[0].supporter_key),
            second,  # takes only the late one
            revoked(first),  # bots 1 and 2 pass to `second`; bot 0 has no domain left: back
        ]
    )
    assert dict(tally.as_mapping()) == {
        CounterKey("c", "total", ""): 1,
        CounterKey("c", "country", "FR"): 1,
        CounterKey("c", "action", "signature"): 1,
    }
    assert sorted(tally.invalidations.held.values()) == [second.invalidation_id] * 3
