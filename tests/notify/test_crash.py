"""Crash and restart of ``python -m notify``: at most one email again, then nothing again."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from clameur.topics import Topics
from devstack.mailsink import SmtpSink
from tests.conftest import Infra
from tests.notify.conftest import (
    email_of,
    milestone,
    publish_case_events,
    publish_signatures,
    signature,
)
from tests.support import ServiceProcess, eventually

pytestmark = pytest.mark.slow

SUPPORTERS = ("amina", "ben", "chloe", "dara", "emma")


def stopped_cleanly(service: ServiceProcess) -> None:
    """SIGTERM, then a drained, clean exit."""
    assert service.stop() == 0, service.tail()
    assert "notify stopped" in service.tail(), service.tail()


async def test_a_crash_after_smtp_accepted_resends_at_most_that_one_and_a_restart_nothing(
    notify_env: dict[str, str],
    smtp_sink: SmtpSink,
    infra: Infra,
    topics: Topics,
    new_id: Callable[..., str],
    tmp_path: Path,
) -> None:
    case_id = new_id("nawal")
    await publish_signatures(infra, topics, [signature(case_id, name) for name in SUPPORTERS], wait=False)
    event = milestone(case_id)
    await publish_case_events(infra, topics, [event])
    env = {
        **notify_env,
        "CLAMEUR_NOTIFY_CONCURRENCY": "1",  # one email in flight: the crash point is exact
        "CLAMEUR_NOTIFY_LEASE_S": "2",
    }

    # 1. Dies by SIGKILL right after the SMTP server accepted the first email.
    crashing = ServiceProcess("notify", {**env, "CLAMEUR_NOTIFY_CRASH_AFTER_SMTP": "true"}, tmp_path)
    crashing.start(wait_ready=False)
    assert await asyncio.to_thread(crashing.wait_exit, 90) == -signal.SIGKILL, crashing.tail()
    assert smtp_sink.count() == 1
    first_recipient = smtp_sink.received[0].rcpt_tos[0]

    # 2. Restarted: the unrecorded one goes again once its lease ends, the rest once.
    restarted = ServiceProcess("notify", env, tmp_path).start(timeout=90)
    try:
        database = await asyncpg.connect(infra.database_url)
        try:

            async def all_sent() -> bool:
                states = await database.fetch(
                    "SELECT state FROM notify.deliveries WHERE event_id = $1", event.event_id
                )
                return len(states) == len(SUPPORTERS) and all(row["state"] == "sent" for row in states)

            await eventually(all_sent, within=60, what="every delivery recorded as sent")
            received = Counter(r for mail in smtp_sink.received for r in mail.rcpt_tos)
            assert set(received) == {email_of(name, case_id) for name in SUPPORTERS}
            repeated = {address for address, count in received.items() if count > 1}
            assert repeated <= {first_recipient}, "only the email in flight at the crash may repeat"
            assert max(received.values()) <= 2
            before_restart = smtp_sink.count()

            # 3. A normal stop (SIGTERM) and start: nothing is sent again.
            stopped_cleanly(restarted)
            again = ServiceProcess("notify", env, tmp_path).start(timeout=90)
            try:
                await asyncio.sleep(4)  # two lease lengths: anything left would be due by now
                assert smtp_sink.count() == before_restart
                pending = await database.fetchval(
                    "SELECT count(*) FROM notify.deliveries WHERE event_id = $1 AND state <> 'sent'",
                    event.event_id,
                )
                assert pending == 0
            finally:
                stopped_cleanly(again)
        finally:
            await database.close()
    finally:
        restarted.stop()
