"""The sender's order against real Postgres and a real SMTP sink: confirmations first, news a share.

A sender with its rate cap at a few hundred emails a second, a victory mailing of
hundreds pending, confirmations written while it runs.  What reaches the sink, in
order, says who went first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from notify.contacts import ContactCipher
from notify.ledger import DeliveryLedger, request_confirmations
from notify.messages import ConfirmationRenderer, MessageRenderer, SenderIdentity, Templates
from notify.metrics import NotifyMetrics
from notify.retries import RateLimiter
from notify.sending import Sender, SendingOptions
from notify.settings import parse_smtp_url
from notify.smtp import SmtpPool
from notify.tokens import ConfirmationSigner, TokenSigner
from prometheus_client import CollectorRegistry

from clameur.events import VictoryDeclared
from clameur.retry import RetryPolicy
from devstack.mailsink import SmtpSink
from tests.conftest import TEST_SECRET

RATE_PER_S = 200
NEWS_EVERY = 10
MAILING = 400
CLAIM_BATCH = 40
CONCURRENCY = 4


async def add_contacts(pool: asyncpg.Pool[Any], keys: Sequence[str]) -> None:
    cipher = ContactCipher(TEST_SECRET)
    await pool.executemany(
        "INSERT INTO notify.contacts (supporter_key, email_sealed, first_name_sealed, locale, recorded_at)"
        " VALUES ($1, $2, $3, 'en', now())",
        [
            (key, cipher.seal(key, "email", f"{key}@example.org"), cipher.seal(key, "first_name", "A"))
            for key in keys
        ],
    )


async def pending_mailing(pool: asyncpg.Pool[Any], case_id: str, keys: Sequence[str]) -> None:
    """A victory on ``case_id`` recorded and fanned out to ``keys``: news rows, all due."""
    event = VictoryDeclared(
        event_id=uuid4(),
        case_id=case_id,
        headline={"en": "We won"},
        message={"en": "Thank you"},
        total=len(keys),
        case_title={"en": "Free Nawal"},
        default_locale="en",
    )
    await add_contacts(pool, keys)
    await pool.execute(
        "INSERT INTO notify.case_events (event_id, case_id, kind, occurred_at, event, fanned_out_at)"
        " VALUES ($1, $2, 'victory', now(), $3::jsonb, now())",
        event.event_id,
        case_id,
        event.model_dump(mode="json"),
    )
    await pool.executemany(
        "INSERT INTO notify.deliveries (event_id, supporter_key, kind, case_id)"
        " VALUES ($1, $2, 'victory', $3)",
        [(event.event_id, key, case_id) for key in keys],
    )


async def ask_to_confirm(pool: asyncpg.Pool[Any], case_id: str, keys: Sequence[str]) -> None:
    """``keys`` signed ``case_id`` (awaiting confirmation): one confirmation row each, due."""
    await add_contacts(pool, keys)
    await pool.executemany(
        "INSERT INTO notify.subscriptions"
        " (case_id, supporter_key, signed_at, wants_updates, awaits_confirmation)"
        " VALUES ($1, $2, now(), true, true)",
        [(case_id, key) for key in keys],
    )
    async with pool.acquire() as connection:
        await request_confirmations(connection, list(keys))


async def pending(pool: asyncpg.Pool[Any], kind: str, case_id: str) -> int:
    count = await pool.fetchval(
        "SELECT count(*) FROM notify.deliveries"
        " WHERE kind = $1 AND case_id = $2 AND state IN ('pending', 'sending')",
        kind,
        case_id,
    )
    return int(count)


@dataclass
class Sending:
    start: Callable[[], None]
    cases: list[str] = field(default_factory=list)
    """Cases whose rows left unsent are cancelled at the end, so no later test sends them."""


@pytest.fixture
async def sending(pool: asyncpg.Pool[Any], smtp_sink: SmtpSink) -> AsyncIterator[Sending]:
    """A sender on the test database to the sink, started by ``start()``; stopped at the end."""
    identity = SenderIdentity("news@clameur.example.org", "Clameur", "https://clameur.example.org")
    templates = Templates()
    transport = SmtpPool(
        parse_smtp_url(f"smtp://127.0.0.1:{smtp_sink.port}"),
        size=4,
        timeout_s=10,
        messages_per_connection=1000,
    )
    sender = Sender(
        DeliveryLedger(pool, ContactCipher(TEST_SECRET).open),
        MessageRenderer(templates, identity, TokenSigner(TEST_SECRET)),
        transport,
        NotifyMetrics(CollectorRegistry()),
        RetryPolicy(0.2, 1, 5),
        RateLimiter(RATE_PER_S, time.monotonic, burst=CONCURRENCY),
        SendingOptions(
            concurrency=CONCURRENCY, claim_batch=CLAIM_BATCH, idle_poll_s=0.05, news_every=NEWS_EVERY
        ),
        confirmations=ConfirmationRenderer(templates, identity, ConfirmationSigner(TEST_SECRET), 86400),
    )
    tasks: list[asyncio.Task[None]] = []
    running = Sending(lambda: tasks.append(asyncio.create_task(sender.run())))
    yield running
    sender.stop()
    await asyncio.gather(*tasks)
    await transport.close()
    await pool.execute(
        "UPDATE notify.deliveries SET state = 'cancelled'"
        " WHERE case_id = ANY($1::text[]) AND state IN ('pending', 'sending')",
        running.cases,
    )


def arrivals(smtp_sink: SmtpSink) -> list[str]:
    """What reached the sink, in arrival order: ``confirmation`` or ``news``, by subject.

    Every email counts, whoever it is for: the sender also takes due rows other tests left.
    """
    subjects = [str(mail.message["Subject"]) for mail in list(smtp_sink.received)]
    return ["confirmation" if "confirm" in subject else "news" for subject in subjects]


async def until(condition: Callable[[], object], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


async def test_a_confirmation_goes_ahead_of_a_pending_mailing(
    pool: asyncpg.Pool[Any], smtp_sink: SmtpSink, sending: Sending, new_id: Callable[..., str]
) -> None:
    mailing_case, signed_case, amina = new_id("won"), new_id("nawal"), new_id("amina")
    sending.cases += [mailing_case, signed_case]
    await pending_mailing(pool, mailing_case, [new_id("news") for _ in range(MAILING)])
    sending.start()
    await until(lambda: smtp_sink.count() >= 20)
    sent_before = smtp_sink.count()
    await ask_to_confirm(pool, signed_case, [amina])
    await until(lambda: smtp_sink.to(f"{amina}@example.org"))
    # The fault: the mailing was under way and most of it still waiting when Amina signed.
    assert await pending(pool, "victory", mailing_case) >= MAILING // 2
    recipients = [mail.rcpt_tos[0] for mail in list(smtp_sink.received)]
    sent_between = recipients.index(f"{amina}@example.org") - sent_before
    # Ahead of her only what was in flight or already claimed (one claim), and news's share.
    assert sent_between <= CLAIM_BATCH + CLAIM_BATCH // NEWS_EVERY + CONCURRENCY, sent_between


async def test_the_mailing_moves_while_confirmations_keep_coming(
    pool: asyncpg.Pool[Any], smtp_sink: SmtpSink, sending: Sending, new_id: Callable[..., str]
) -> None:
    mailing_case, signed_case = new_id("won"), new_id("nawal")
    sending.cases += [mailing_case, signed_case]
    await pending_mailing(pool, mailing_case, [new_id("news") for _ in range(MAILING)])
    # A backlog of confirmations, and more coming faster than the sender sends (1.5 times
    # its rate): under strict priority, news would wait for the end of the surge.
    await ask_to_confirm(pool, signed_case, [new_id("signer") for _ in range(2 * RATE_PER_S)])
    sending.start()
    for _ in range(20):
        await asyncio.sleep(0.1)
        await ask_to_confirm(pool, signed_case, [new_id("signer") for _ in range(RATE_PER_S * 3 // 20)])
    order = arrivals(smtp_sink)
    # The fault: confirmations were waiting the whole time (the sender never caught up).
    assert await pending(pool, "confirmation", signed_case) >= RATE_PER_S // 2
    assert len(order) >= RATE_PER_S, "the sender sent at its pace"
    assert order[:CONCURRENCY] == ["confirmation"] * CONCURRENCY
    # News had its share (one send in NEWS_EVERY), and no more: confirmations stayed first.
    news = order.count("news")
    assert len(order) // (2 * NEWS_EVERY) <= news <= 2 * len(order) // NEWS_EVERY, (news, len(order))
    assert MAILING - await pending(pool, "victory", mailing_case) >= len(order) // (2 * NEWS_EVERY)
