"""The Idempotency-Key window (no services)."""

from __future__ import annotations

import asyncio

import pytest
from intake.idempotency import IdempotencyWindow, StoredAnswer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(clock: Clock | None = None, max_keys: int = 10) -> IdempotencyWindow[StoredAnswer]:
    return IdempotencyWindow(
        max_keys=max_keys, ttl=60.0, remember=lambda answer: answer.remembered, timer=clock or Clock()
    )


def accepted(n: int) -> StoredAnswer:
    return StoredAnswer(202, f'{{"signature_id": "{n}"}}'.encode(), "application/json")


async def test_a_retry_gets_the_first_answer_until_the_window_ends() -> None:
    clock = Clock()
    answers = window(clock)
    calls = 0

    async def compute() -> StoredAnswer:
        nonlocal calls
        calls += 1
        return accepted(calls)

    first, replayed = await answers.answer(("case", "k1"), compute)
    assert (first.body, replayed) == (accepted(1).body, False)
    again, replayed = await answers.answer(("case", "k1"), compute)
    assert (again.body, replayed) == (accepted(1).body, True)
    other, _ = await answers.answer(("other-case", "k1"), compute)
    assert other.body == accepted(2).body
    clock.now += 61
    late, replayed = await answers.answer(("case", "k1"), compute)
    assert (late.body, replayed) == (accepted(3).body, False)


async def test_refusals_are_not_remembered() -> None:
    answers = window()
    statuses = iter([503, 202])

    async def compute() -> StoredAnswer:
        return StoredAnswer(next(statuses), b"{}", "application/json")

    assert (await answers.answer(("k",), compute))[0].status == 503
    assert (await answers.answer(("k",), compute))[0].status == 202
    assert len(answers) == 1


async def test_concurrent_duplicates_compute_once() -> None:
    answers = window()
    calls = 0
    release = asyncio.Event()

    async def compute() -> StoredAnswer:
        nonlocal calls
        calls += 1
        await release.wait()
        return accepted(calls)

    racing = [asyncio.create_task(answers.answer(("k",), compute)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*racing)
    assert calls == 1
    assert {answer.body for answer, _ in results} == {accepted(1).body}
    assert sorted(replayed for _, replayed in results) == [False, True, True, True, True]


async def test_waiters_share_the_first_failure() -> None:
    answers = window()
    release = asyncio.Event()

    async def compute() -> StoredAnswer:
        await release.wait()
        raise RuntimeError("boom")

    racing = [asyncio.create_task(answers.answer(("k",), compute)) for _ in range(3)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*racing, return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)


async def test_a_waiter_computes_itself_when_the_first_request_is_cancelled() -> None:
    answers = window()
    started = asyncio.Event()

    async def slow() -> StoredAnswer:
        started.set()
        await asyncio.sleep(10)
        return accepted(1)

    async def fast() -> StoredAnswer:
        return accepted(2)

    first = asyncio.create_task(answers.answer(("k",), slow))
    await started.wait()
    second = asyncio.create_task(answers.answer(("k",), fast))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    answer, replayed = await second
    assert (answer.body, replayed) == (accepted(2).body, False)


async def test_a_window_of_zero_keys_remembers_nothing() -> None:
    answers = window(max_keys=0)
    calls = 0

    async def compute() -> StoredAnswer:
        nonlocal calls
        calls += 1
        return accepted(calls)

    await answers.answer(("k",), compute)
    await answers.answer(("k",), compute)
    assert calls == 2
