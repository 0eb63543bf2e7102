"""``Idempotency-Key``: a retried POST gets the first answer and publishes nothing again.

The window is per instance and in memory: answers are kept ``ttl`` seconds (default 24 h),
at most ``max_keys`` of them (default 100,000; the oldest go first).  A retry that reaches
another instance, or comes after the window, publishes again; that is harmless because tally
counts a supporter once per case and action (``supporter_key``), so the window only saves
work and keeps the first ``signature_id``.

Only acceptances (202) are remembered: a refusal (422, 429, 503...) is cheap to compute again
and may well change (the broker is back, the rate limit has refilled).  Requests with the
same key running at the same time share one computation: only one publishes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cachetools import TTLCache

MAX_KEY_LENGTH = 255

Answer = TypeVar("Answer")


@dataclass(frozen=True)
class StoredAnswer:
    """An answer as sent: status, body and the headers worth replaying."""

    status: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def remembered(self) -> bool:
        return self.status == 202


class IdempotencyWindow(Generic[Answer]):
    """First answers by key; concurrent duplicates wait for the first computation."""

    def __init__(
        self,
        *,
        max_keys: int,
        ttl: float,
        remember: Callable[[Answer], bool],
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._answers: TTLCache[tuple[str, ...], Answer] | None = (
            TTLCache(maxsize=max_keys, ttl=ttl, timer=timer) if max_keys > 0 else None
        )
        self._in_flight: dict[tuple[str, ...], asyncio.Future[Answer]] = {}
        self._remember = remember

    def __len__(self) -> int:
        return len(self._answers) if self._answers is not None else 0

    async def answer(
        self, key: tuple[str, ...], compute: Callable[[], Awaitable[Answer]]
    ) -> tuple[Answer, bool]:
        """The answer for ``key`` and whether it is a replay.

        ``compute`` runs at most once for concurrent callers with the same key; if it
        raises, every waiting caller gets the same exception, and nothing is remembered.
        """
        if self._answers is None:
            return await compute(), False
        while True:
            stored = self._answers.get(key)
            if stored is not None:
                return stored, True
            running = self._in_flight.get(key)
            if running is None:
                break
            try:
                # shield: a waiter that gives up must not cancel the first request.
                return await asyncio.shield(running), True
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if running.cancelled() and current is not None and not current.cancelling():
                    continue  # the first request was cancelled, not us: try again ourselves
                raise
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await compute()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        else:
            if self._remember(result):
                self._answers[key] = result
            future.set_result(result)
            return result, False
        finally:
            del self._in_flight[key]
