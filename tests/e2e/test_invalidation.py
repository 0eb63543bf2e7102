"""End to end, fraud taken back out in the open (issue 13): a bot wave among real signatures is
invalidated and restored through tally's admin API, across ``kill -9`` of tally while each
one is being applied, and a replay of the log agrees with the live counts.

The three services run as processes on the harness's Kafka and Postgres, mailing a real SMTP
sink; tally is replaced mid-way by one that kills itself at a crash point
(``CLAMEUR_TALLY_CRASH_AT``, test only) in the batch that holds the invalidation.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tally.reconcile import check_counters, rebuild_counters

from clameur.database import create_pool
from clameur.topics import Topics
from devstack.mailsink import SmtpSink
from tests.conftest import Infra
from tests.e2e.stack import ADMIN, counts_become, create_case, public_case, running_stack, sign_from
from tests.support import ServiceProcess, wait_until

pytestmark = pytest.mark.slow

BOT_DOMAIN = "bot-farm.example"
REAL = [(f"supporter{n}@example.org", ["FR", "MA", "BE"][n % 3], "signature") for n in range(12)] + [
    ("supporter1@example.org", "MA", "letter"),
    ("supporter2@example.org", "BE", "letter"),
]
BOTS = [(f"bot{n}@{BOT_DOMAIN}", ["FR", "SN"][n % 2], ["signature", "letter"][n % 3 == 0]) for n in range(9)]


def test_a_bot_wave_is_taken_out_and_given_back_across_kill_9_and_a_rebuild(
    service_env: dict[str, str],
    smtp_sink: SmtpSink,
    tmp_path: Path,
    new_id: Callable[..., str],
    infra: Infra,
    topics: Topics,
) -> None:
    case_id = new_id("nawal")
    with running_stack(service_env, smtp_sink.port, tmp_path) as stack:
        tally = stack["tally"].url
        # Every country shown as it is (no folding into "other"), so the drop is exact per country.
        create_case(tally, case_id, actions=["signature", "letter"], small_count_threshold=1)
        _sign_everyone(stack["intake"].url, case_id)
        before = counts_become(tally, case_id, total=len(REAL) + len(BOTS))
        assert (before["by_country"], before["by_action"]) == (_spread(REAL + BOTS))
        body = {"reason": "bot wave from one domain", "filter": {"email_domains": [BOT_DOMAIN.upper()]}}
        invalidations = f"{case_id}/invalidations"
        dry = _admin("POST", tally, invalidations, json={**body, "dry_run": True})
        assert dry == _wave(BOTS), "the dry run matches exactly the bot wave"
        assert public_case(tally, case_id) == before, "a dry run changes nothing"

        _crash_while(stack["tally"], "before_db_commit", "POST", invalidations, json=body)
        # Killed before its commit: nothing of the invalidation is stored, it is only on the log.
        assert asyncio.run(_invalidations(infra.database_url, case_id)) == []

        survivor = ServiceProcess("tally", stack["tally"].env, tmp_path).start()
        try:
            # Applied by the restarted tally, so read again from the log after the crash.
            wait_until(lambda: len(_listing(survivor.url, case_id)) == 1, timeout=30, what="the replay")
            [applied] = _listing(survivor.url, case_id)
            assert {name: applied[name] for name in dry} == dry, "the real run agrees with the dry run"
            after = counts_become(survivor.url, case_id, total=len(REAL))
            assert (after["by_country"], after["by_action"]) == _spread(REAL)
            _rebuild_agrees(infra, topics, case_id)
        finally:
            survivor.stop()

        _crash_while(stack["tally"], "after_db_commit", "DELETE", f"{invalidations}/{applied['id']}")
        # Killed just after its commit: the restore is stored, and must not be applied twice.
        assert asyncio.run(_invalidations(infra.database_url, case_id)) == [True], "revoked at the crash"
        _restored_exactly(stack["tally"], case_id, dry, infra, topics)


def _restored_exactly(
    live: ServiceProcess, case_id: str, dry: dict[str, Any], infra: Infra, topics: Topics
) -> None:
    """A tally restarted after the crash shows the bot wave back in the counts, once."""
    survivor = ServiceProcess("tally", live.env, live.log.parent).start()
    try:
        restored = counts_become(survivor.url, case_id, total=len(REAL) + len(BOTS))
        assert (restored["by_country"], restored["by_action"]) == _spread(REAL + BOTS)
        [revoked] = _listing(survivor.url, case_id)
        assert revoked["revoked_at"] is not None and revoked["restored"] == dry
        _rebuild_agrees(infra, topics, case_id)
        assert public_case(survivor.url, case_id)["total"] == len(REAL) + len(BOTS)
    finally:
        survivor.stop()


def _sign_everyone(intake: str, case_id: str) -> None:
    """The real supporters and the bots, mixed; intake answers 404 until it has read the case."""
    first_email, first_country, first_action = REAL[0]
    wait_until(
        lambda: _sign(intake, case_id, 0, first_email, first_country, first_action) != 404,
        timeout=30,
        interval=0.3,
        what=f"intake to know {case_id}",
    )
    for n, (email, country, action) in enumerate(REAL[1:] + BOTS, 1):
        assert _sign(intake, case_id, n, email, country, action) == 202


def _sign(intake: str, case_id: str, n: int, email: str, country: str, action: str) -> int:
    fields = {"country": country, "action": action}
    return sign_from(intake, case_id, n, email, f"203.0.113.{n}", fields).status_code


def _spread(signatures: list[tuple[str, str, str]]) -> tuple[dict[str, int], dict[str, int]]:
    return dict(Counter(c for _, c, _ in signatures)), dict(Counter(a for _, _, a in signatures))


def _wave(signatures: list[tuple[str, str, str]]) -> dict[str, Any]:
    by_country, by_action = _spread(signatures)
    return {"matched": len(signatures), "by_country": by_country, "by_action": by_action}


def _admin(method: str, tally: str, path: str, **request: Any) -> dict[str, Any]:
    answer = httpx.request(method, f"{tally}/v1/admin/cases/{path}", headers=ADMIN, timeout=30, **request)
    assert answer.status_code in (200, 201), answer.text
    return dict(answer.json())


def _listing(tally: str, case_id: str) -> list[dict[str, Any]]:
    return list(_admin("GET", tally, f"{case_id}/invalidations")["invalidations"])


def _crash_while(live: ServiceProcess, crash_at: str, method: str, path: str, **request: Any) -> None:
    """In place of the stack's tally (stopped), one of the same settings that kills itself at
    ``crash_at`` in the first batch it applies, asked ``method path``: the batch that holds the
    invalidation's event.  Proves the crash took place."""
    live.stop()
    doomed = ServiceProcess("tally", {**live.env, "CLAMEUR_TALLY_CRASH_AT": crash_at}, live.log.parent)
    doomed.start()
    try:
        url = f"{doomed.url}/v1/admin/cases/{path}"
        with pytest.raises(httpx.HTTPError):  # the process dies before it answers
            httpx.request(method, url, headers=ADMIN, timeout=60, **request)
        assert doomed.wait_exit(60) == -signal.SIGKILL, doomed.tail()
        assert "test crash point reached" in doomed.log.read_text(), doomed.tail()
    finally:
        doomed.kill()


async def _invalidations(database_url: str, case_id: str) -> list[bool]:
    """Whether each stored invalidation of the case is revoked (none stored: [])."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        rows = await pool.fetch(
            "SELECT revoked_at IS NOT NULL AS revoked FROM tally.invalidations WHERE case_id = $1", case_id
        )
        return [bool(row["revoked"]) for row in rows]
    finally:
        await pool.close()


def _rebuild_agrees(infra: Infra, topics: Topics, case_id: str) -> None:
    """signatures.v2 folded from its start (tally's own rebuild code: every signature, then the
    invalidation and its revocation at their place in the log) gives the live counters."""

    async def rebuild() -> None:
        pool = await create_pool(infra.database_url, min_size=1, max_size=2)
        try:
            rebuilt = await rebuild_counters(pool, infra.kafka, topics.signatures, cases=[case_id])
            assert rebuilt.counted == len(REAL) + len(BOTS), rebuilt  # the replay read them all
            assert rebuilt.drifts == [], rebuilt
            assert await check_counters(pool, cases=[case_id]) == []
        finally:
            await pool.close()

    asyncio.run(rebuild())
