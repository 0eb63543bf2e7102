"""End to end: retention forgets a closed case's supporters at its time and not before, and
small per-country counts are folded into "other" for the public (issue 14, "Tests").

Retention days are whole days (``retention_days`` >= 1 per case): the honest short
retention is notify's global override ``CLAMEUR_RETENTION_DAYS=0``, under which a closed
case is due at the first pass after it closes.  The job runs when notify starts and then
every ``CLAMEUR_RETENTION_INTERVAL_S`` (one hour here): so the test closes the case, sees the
dry run report what is due while nothing has been forgotten, and restarts notify to run the
next pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from clameur.topics import Topics
from tests.conftest import TEST_ERASURE_BOUND_S, Infra
from tests.e2e.stack import (
    ADMIN,
    OwnStack,
    Supporter,
    case_document,
    create_case,
    fetchval,
    sealed_contact,
)
from tests.privacy import broker_data_dir, topic_data_contains
from tests.support import ROOT, ServiceProcess, wait_until

pytestmark = pytest.mark.slow


def test_a_closed_case_s_supporters_are_forgotten_at_the_next_pass_and_not_before(
    infra: Infra, topics: Topics, own_stack: Callable[..., OwnStack], new_id: Callable[..., str]
) -> None:
    closing, still_open = new_id("atena"), new_id("nawal")
    only_closing, only_open, both = Supporter.unique(), Supporter.unique(), Supporter.unique()
    disk = broker_data_dir(infra, topics.prefix)
    own = own_stack(CLAMEUR_RETENTION_DAYS="0", CLAMEUR_RETENTION_INTERVAL_S="3600")
    database_url, env = own.database_url, own.env
    with own.running() as services:
        tally, intake = services["tally"].url, services["intake"].url
        for case_id in (closing, still_open):
            create_case(tally, case_id)
        for supporter, case_ids in (
            (only_closing, [closing]),
            (only_open, [still_open]),
            (both, [closing, still_open]),
        ):
            for case_id in case_ids:
                _sign(intake, case_id, supporter)
        _until_held(database_url, [only_closing, only_open, both])
        assert _dry_run(env)["due_supporters"] == 0, "both cases open: nobody is due"

        _close(tally, closing, database_url)
        report = _dry_run(env)
        assert (report["due_supporters"], report["forgotten"], report["by_case"]) == (1, 0, {closing: 1})
        held = [sealed_contact(database_url, s.key) for s in (only_closing, only_open, both)]
        assert all(held), "due, reported, and not forgotten before the pass"

        _next_pass(services["notify"])
        wait_until(
            lambda: sealed_contact(database_url, only_closing.key) is None,
            timeout=30,
            what="the pass to forget the closed case's supporter",
        )
        forgotten_at = datetime.now(UTC)
        erased = 'clameur_notify_retention_erased_total{reason="case_ended"}'
        wait_until(lambda: _metric(services["notify"].url, erased) == 1.0, timeout=10, what=erased)
        assert sealed_contact(database_url, only_open.key) is not None, "an open case's supporter is kept"
        assert sealed_contact(database_url, both.key) is not None, "who follows an open case is kept"
        assert _dry_run(env)["due_supporters"] == 0
        _only_the_forgotten_left_the_disk(disk, topics, only_closing, [only_open, both], forgotten_at)
        assert case_document(tally, closing)["total"] == 2, "their signatures still count"


def _until_held(database_url: str, supporters: list[Supporter]) -> None:
    """The precondition: notify holds every supporter's sealed contact."""
    wait_until(
        lambda: all(sealed_contact(database_url, s.key) is not None for s in supporters),
        timeout=30,
        what="notify to hold every contact",
    )


def _close(tally: str, case_id: str, database_url: str) -> None:
    """Closes the case and waits for notify to start its retention clock."""
    closed = httpx.post(f"{tally}/v1/admin/cases/{case_id}/close", headers=ADMIN, timeout=10)
    assert closed.status_code == 200, closed.text
    clock = "SELECT ended_at FROM notify.case_retention WHERE case_id = $1"
    wait_until(
        lambda: fetchval(database_url, clock, case_id) is not None,
        timeout=20,
        what="notify to start the closed case's retention clock",
    )


def _sign(intake: str, case_id: str, supporter: Supporter, **fields: object) -> None:
    """Signs once intake knows the case (it learns of cases from cases.v1)."""

    def signed() -> bool:
        body = supporter.form(**fields)
        answer = httpx.post(f"{intake}/v1/cases/{case_id}/signatures", json=body, timeout=10)
        assert answer.status_code in (202, 404), answer.text
        return answer.status_code == 202

    wait_until(signed, timeout=30, what=f"intake to take a signature for {case_id}")


def _dry_run(env: dict[str, str]) -> dict[str, Any]:
    """``python -m notify.retention --dry-run`` against the test's database: its report."""
    ran = subprocess.run(
        [sys.executable, "-m", "notify.retention", "--dry-run"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, Any] = json.loads(ran.stdout)
    assert report["dry_run"] is True
    return report


def _next_pass(notify: ServiceProcess) -> None:
    """The job's next pass: it runs when notify starts (then once an hour here)."""
    notify.stop()
    notify.start(wait_ready=True, timeout=90)


def _metric(url: str, series: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[-1])
    raise AssertionError(f"no {series} on {url}/metrics")


def _only_the_forgotten_left_the_disk(
    disk: Path, topics: Topics, forgotten: Supporter, kept: list[Supporter], forgotten_at: datetime
) -> None:
    """Within the bound, the forgotten supporter's contact leaves contacts.v1's files; the
    kept supporters' contacts are still there (compaction keeps the latest of each key)."""
    deadline = forgotten_at + timedelta(seconds=TEST_ERASURE_BOUND_S + 20)
    wait_until(
        lambda: topic_data_contains(disk, topics.prefix, forgotten.needles) == {},
        timeout=(deadline - datetime.now(UTC)).total_seconds(),
        interval=0.5,
        what="the forgotten supporter gone from every segment file",
    )
    for supporter in kept:
        assert topic_data_contains(disk, topics.contacts, [supporter.email.encode()]), "kept on the log"


def test_a_country_with_two_signatures_is_other_for_the_public_exact_for_the_admin(
    stack: dict[str, ServiceProcess], new_id: Callable[..., str]
) -> None:
    tally, intake = stack["tally"].url, stack["intake"].url
    case_id = new_id("atena")
    create_case(tally, case_id)  # the default threshold: 5
    signers = [("IR", Supporter.unique()) for _ in range(2)] + [("FR", Supporter.unique()) for _ in range(5)]
    for country, supporter in signers:
        _sign(intake, case_id, supporter, country=country, consent={"updates": False})
    wait_until(lambda: case_document(tally, case_id)["total"] == 7, timeout=30, what="7 signatures counted")

    admin = case_document(tally, case_id, admin=True)
    assert admin["by_country"] == {"IR": 2, "FR": 5}, "the admin sees every country exactly"
    public = case_document(tally, case_id)
    assert public["by_country"] == {"FR": 5, "other": 2}, "IR's 2 are folded into other"
    live = _first_live_event(tally, case_id)
    assert live["total"] == 7
    assert live["by_country"] == {"FR": 5, "other": 2}, "the live stream folds them too"


def _first_live_event(tally: str, case_id: str) -> dict[str, Any]:
    """The first ``count`` event of ``GET /v1/cases/{id}/live`` (server-sent events)."""
    with httpx.stream("GET", f"{tally}/v1/cases/{case_id}/live", timeout=10) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data:"):
                event: dict[str, Any] = json.loads(line.removeprefix("data:").strip())
                return event
    raise AssertionError("the live stream ended without an event")
