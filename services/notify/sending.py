"""From recorded case news to emails: the fan-out loop and the sender loop.

The sender claims due deliveries in batches (a lease each; confirmations and reminders
before any news, so a large mailing never delays them, with news one send in ten while
confirmations wait, so a surge never stops a mailing), checks the unsubscription
again (in the claim itself), renders, paces sends to the rate cap, sends over a pool
of SMTP connections with bounded concurrency, and records outcomes in batches.

At most once, and where it can break: a delivery is marked ``sent`` only after the
SMTP server accepted it.  If the process dies between the server's acceptance and the
recording of the outcome, the row is still ``sending``; when its lease ends it is due
again and that one email goes out a second time (same Message-ID, so many mail
clients fold the two).  The window is the outcome flush interval (50 ms by default):
only emails accepted in that window can repeat.  A graceful stop (SIGTERM) finishes
the sends in flight, records every outcome and hands unsent claims back, so a normal
restart sends nothing again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

import asyncpg
from cachetools import LRUCache

from clameur.events import utc_now
from clameur.logs import describe_error
from clameur.retry import RetryPolicy
from notify.ledger import CONFIRMATION_KINDS, ClaimedDelivery, DeliveryLedger, Outcomes, Reschedule
from notify.messages import (
    CaseNews,
    ConfirmationKind,
    ConfirmationRenderer,
    MessageRenderer,
    OutgoingEmail,
    UnsendableEmail,
)
from notify.metrics import KINDS, NotifyMetrics
from notify.progress import Marks
from notify.retries import RateLimiter
from notify.smtp import MailTransport, SendFailure

logger = logging.getLogger(__name__)

_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True)
class SendingOptions:
    concurrency: int = 16
    claim_batch: int = 200
    lease_s: float = 300.0
    idle_poll_s: float = 0.5
    flush_interval_s: float = 0.05
    flush_size: int = 200
    news_every: int = 10
    """While confirmations wait, one send in this many is news (see :class:`_Jobs`)."""
    crash_after_smtp: bool = False
    """Test only: SIGKILL this process right after the first accepted email."""


@dataclass(frozen=True)
class _Job:
    delivery: ClaimedDelivery
    news: CaseNews | None
    """``None`` for a confirmation or a reminder (no case event behind it)."""


class _Jobs:
    """Claimed jobs waiting for a worker: confirmations and reminders first, news a share.

    While confirmations wait, one job in ``news_every`` taken is news (when news waits):
    a confirmation waits behind at most one news send in ``news_every``, and a mailing
    still moves during a surge of signatures instead of waiting for its end.  With no
    confirmation waiting, news takes every slot.  ``None`` (a worker's stop) comes last.
    """

    def __init__(self, news_every: int) -> None:
        self._news_every = news_every
        self._urgent: collections.deque[_Job] = collections.deque()
        self._news: collections.deque[_Job] = collections.deque()
        self._stops = 0
        self._since_news = 0
        # One token per job or stop put: ``get`` waits on it, then takes by the rule above.
        self._tokens: asyncio.Queue[None] = asyncio.Queue()

    def put_nowait(self, job: _Job | None) -> None:
        if job is None:
            self._stops += 1
        elif job.news is None:
            self._urgent.append(job)
        else:
            self._news.append(job)
        self._tokens.put_nowait(None)

    async def get(self) -> _Job | None:
        await self._tokens.get()
        return self._take()

    def get_nowait(self) -> _Job | None:
        self._tokens.get_nowait()
        return self._take()

    def _take(self) -> _Job | None:
        if self._urgent and not (self._news and self._since_news >= self._news_every - 1):
            self._since_news += 1
            return self._urgent.popleft()
        if self._news:
            self._since_news = 0
            return self._news.popleft()
        self._stops -= 1
        return None

    def qsize(self) -> int:
        return self._tokens.qsize()

    def empty(self) -> bool:
        return self._tokens.empty()


@dataclass
class _PendingOutcomes:
    sent: list[int] = field(default_factory=list)
    retry: list[Reschedule] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    cancelled: list[tuple[int, str]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sent) + len(self.retry) + len(self.failed) + len(self.cancelled) + len(self.released)

    def take(self) -> Outcomes:
        taken = Outcomes(self.sent, self.retry, self.failed, self.cancelled, self.released)
        self.sent, self.retry, self.failed, self.cancelled, self.released = [], [], [], [], []
        return taken

    def put_back(self, outcomes: Outcomes) -> None:
        self.sent.extend(outcomes.sent)
        self.retry.extend(outcomes.retry)
        self.failed.extend(outcomes.failed)
        self.cancelled.extend(outcomes.cancelled)
        self.released.extend(outcomes.released)


@dataclass(eq=False)
class Sender:
    """Claims, renders, sends and records deliveries until :meth:`stop`."""

    ledger: DeliveryLedger
    renderer: MessageRenderer
    transport: MailTransport
    metrics: NotifyMetrics
    retry: RetryPolicy
    limiter: RateLimiter
    options: SendingOptions
    _: KW_ONLY
    clock: Callable[[], datetime] = utc_now
    random_value: Callable[[], float] = random.random
    confirmations: ConfirmationRenderer | None = None
    _stopping: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _outcomes: _PendingOutcomes = field(init=False, default_factory=_PendingOutcomes)
    _flush_now: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _room: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _news: LRUCache[UUID, CaseNews] = field(init=False, default_factory=lambda: LRUCache(maxsize=1024))

    def __post_init__(self) -> None:
        # Labelled children looked up once: ``labels()`` takes a lock and builds a key per call.
        self._attempts = {kind: self.metrics.attempts.labels(kind) for kind in KINDS}
        self._sent = {kind: self.metrics.sent.labels(kind) for kind in KINDS}

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once sends in flight are recorded."""
        self._stopping.set()

    async def run(self) -> None:
        queue = _Jobs(self.options.news_every)
        workers = [asyncio.create_task(self._work(queue)) for _ in range(self.options.concurrency)]
        recorder = asyncio.create_task(self._record_continuously())
        try:
            await self._claim_continuously(queue)
        finally:
            # Drain: claims not started go back at once; sends in flight finish.
            while not queue.empty():
                job = queue.get_nowait()
                if job is not None:
                    self._outcomes.released.append(job.delivery.id)
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.gather(*workers, return_exceptions=True)
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            await self._flush_until_recorded()

    async def _claim_continuously(self, queue: _Jobs) -> None:
        batch = self.options.claim_batch
        # Each claim brings news for its share of the slots, however many confirmations are due.
        news_at_least = -(-batch // self.options.news_every)
        while not self._stopping.is_set():
            if queue.qsize() >= batch:
                # Workers set this as they take jobs: no busy polling while the queue is full.
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=self.options.idle_poll_s)
                continue
            try:
                claimed = await self.ledger.claim(batch, self.options.lease_s, news_at_least=news_at_least)
                jobs = await self._triage(claimed)
            except _DATABASE_ERRORS as error:
                logger.warning("claiming deliveries failed; retrying", extra={"error": type(error).__name__})
                await self._pause(min(5.0, self.options.idle_poll_s * 4))
                continue
            for job in jobs:
                queue.put_nowait(job)
            if not claimed:
                await self._pause(self.options.idle_poll_s)

    async def _triage(self, claimed: list[ClaimedDelivery]) -> list[_Job]:
        missing = {
            d.event_id for d in claimed if d.kind not in CONFIRMATION_KINDS and d.event_id not in self._news
        }
        if missing:
            self._news.update(await self.ledger.case_news(missing))
        jobs = []
        for delivery in claimed:
            if delivery.recipient is None:
                self._outcomes.cancelled.append((delivery.id, "supporter erased"))
            elif delivery.suppressed:
                self._outcomes.cancelled.append((delivery.id, "suppressed"))
            elif delivery.unsubscribed:
                self._outcomes.cancelled.append((delivery.id, "unsubscribed"))
            elif delivery.answered:
                # Confirmed or rejected while the email waited: asking again would confuse.
                self._outcomes.cancelled.append((delivery.id, "answered"))
            elif self.retry.gives_up_after(delivery.attempts - 1):
                # The attempt before this claim was the last one allowed: only a lease that ran
                # out (a crash) gets here.  Give up like any last attempt.
                self.metrics.failed.labels(delivery.kind, "permanent").inc()
                self._outcomes.failed.append((delivery.id, "attempts exhausted"))
            elif delivery.kind in CONFIRMATION_KINDS:
                jobs.append(_Job(delivery, None))
            else:
                jobs.append(_Job(delivery, self._news[delivery.event_id]))
        if len(self._outcomes) >= self.options.flush_size:
            self._flush_now.set()
        return jobs

    async def _work(self, queue: _Jobs) -> None:
        while (job := await queue.get()) is not None:
            if queue.qsize() < self.options.claim_batch:
                self._room.set()
            await self._send(job)

    async def _send(self, job: _Job) -> None:
        delay = self.limiter.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        delivery = job.delivery
        assert delivery.recipient is not None  # triage keeps only deliveries with a supporter
        kind = delivery.kind
        log_fields = {
            "event_id": str(delivery.event_id),
            "case_id": delivery.case_id,
            "delivery": delivery.id,
        }
        self._attempts[kind].inc()
        try:
            email = self._render(job)
        except UnsendableEmail as error:
            self.metrics.failed.labels(kind, "permanent").inc()
            self._outcomes.failed.append((delivery.id, str(error)))
            logger.warning("email cannot be built; given up", extra={**log_fields, "error": str(error)})
            return
        started = time.perf_counter()
        try:
            await self.transport.send(email)
        except SendFailure as failure:
            self.metrics.send_duration.observe(time.perf_counter() - started)
            self._record_failure(delivery, failure, log_fields)
        else:
            self.metrics.send_duration.observe(time.perf_counter() - started)
            if self.options.crash_after_smtp:
                # Test hook (CLAMEUR_ENV=test only): die between acceptance and the ledger.
                os.kill(os.getpid(), signal.SIGKILL)
            self._sent[kind].inc()
            self._outcomes.sent.append(delivery.id)
        if len(self._outcomes) >= self.options.flush_size:
            self._flush_now.set()

    def _render(self, job: _Job) -> OutgoingEmail:
        delivery = job.delivery
        assert delivery.recipient is not None  # triage keeps only deliveries with a supporter
        if job.news is not None:
            return self.renderer.render(job.news, delivery.recipient, self.clock())
        if self.confirmations is None:
            raise UnsendableEmail("this sender renders no confirmation emails")
        kind: ConfirmationKind = "reminder" if delivery.kind == "reminder" else "confirmation"
        return self.confirmations.render(
            kind, delivery.case_id, delivery.recipient, self.clock(), news_only=delivery.news_only
        )

    def _record_failure(
        self, delivery: ClaimedDelivery, failure: SendFailure, log_fields: dict[str, object]
    ) -> None:
        kind = delivery.kind
        if failure.kind == "temporary" and not self.retry.gives_up_after(delivery.attempts):
            delay = self.retry.delay_after(delivery.attempts, self.random_value())
            self.metrics.failed.labels(kind, "temporary").inc()
            self._outcomes.retry.append(Reschedule(delivery.id, delay, failure.reason))
            logger.info(
                "temporary SMTP failure; retrying later",
                extra={
                    **log_fields,
                    "reason": failure.reason,
                    "attempts": delivery.attempts,
                    "delay_s": delay,
                },
            )
        else:
            self.metrics.failed.labels(kind, "permanent").inc()
            self._outcomes.failed.append((delivery.id, failure.reason))
            logger.warning(
                "SMTP failure; given up",
                extra={**log_fields, "reason": failure.reason, "attempts": delivery.attempts},
            )

    async def _record_continuously(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), timeout=self.options.flush_interval_s)
            self._flush_now.clear()
            await self._flush_once()

    async def _flush_once(self) -> bool:
        outcomes = self._outcomes.take()
        if not len(outcomes):
            return True
        try:
            await self.ledger.record(outcomes)
        except _DATABASE_ERRORS as error:
            # Keep them: recorded on the next flush.  Until then a lease may run out and a
            # sent email be sent again; the lease is minutes, a database blip is seconds.
            self._outcomes.put_back(outcomes)
            logger.warning("recording outcomes failed; will retry", extra={"error": type(error).__name__})
            await asyncio.sleep(0.5)
            return False
        return True

    async def _flush_until_recorded(self, attempts: int = 20) -> None:
        for _ in range(attempts):
            if await self._flush_once():
                return
        logger.error("outcomes could not be recorded before stopping; their leases will expire")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


class SupporterProgress(Protocol):
    """How far the supporter list has read (:class:`notify.progress.ReadProgress`)."""

    async def ends_now(self) -> Marks: ...

    async def reached(self, marks: Marks) -> bool: ...


class FanOut:
    """Turns each recorded event into delivery rows once the supporter list has caught up.

    The supporter list and the case events come from two topics read by two consumers.
    A milestone must reach everyone who signed before it, so an event is fanned out
    only when the supporter list has read ``signatures.v2`` up to where it ended after
    the event was recorded: every signature tally counted before emitting the event is
    below that point.  That point is marked once, when the event is first ready (the
    end at each look would keep moving during a surge of signatures, and the mailing
    wait for the surge's end).  ``grace_s`` also waits for signatures received just
    before the event but still on their way to the broker.
    """

    def __init__(
        self,
        ledger: DeliveryLedger,
        progress: SupporterProgress,
        *,
        grace_s: float,
        idle_poll_s: float,
        clock: Callable[[], datetime] = utc_now,
        reminder_after_s: float | None = None,
    ) -> None:
        self.ledger = ledger
        self.reminder_after_s = reminder_after_s
        self.progress = progress
        self.grace = timedelta(seconds=grace_s)
        self.idle_poll_s = idle_poll_s
        self.clock = clock
        self._stopping = asyncio.Event()
        self._marks: dict[UUID, Marks] = {}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                progressed = await self.fan_out_ready()
                if self.reminder_after_s is not None:
                    # Reminders are written here too: one loop polls the ledger for due work.
                    progressed = await self.ledger.request_reminders(self.reminder_after_s) > 0 or progressed
            except Exception as error:  # noqa: BLE001 - database or broker away: retry, never stop
                logger.warning("fan-out failed; retrying", extra={"error": describe_error(error)})
                progressed = False
            if not progressed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.idle_poll_s)

    async def fan_out_ready(self) -> bool:
        """Fan out the events that are ready; returns whether it wrote any."""
        events = await self.ledger.events_to_fan_out()
        now = self.clock()
        ready = [event for event in events if event.occurred_at + self.grace <= now]
        # Marks of events fanned out elsewhere (another process) are dropped with them.
        self._marks = {
            event.event_id: self._marks[event.event_id] for event in ready if event.event_id in self._marks
        }
        if any(event.event_id not in self._marks for event in ready):
            mark = await self.progress.ends_now()  # after these events were recorded
            for event in ready:
                self._marks.setdefault(event.event_id, mark)
        fanned_out = False
        for event in ready:
            if not await self.progress.reached(self._marks[event.event_id]):
                continue
            inserted = await self.ledger.fan_out(event.event_id)
            del self._marks[event.event_id]
            fanned_out = True
            logger.info(
                "case news fanned out",
                extra={"event_id": str(event.event_id), "case_id": event.case_id, "deliveries": inserted},
            )
        return fanned_out
