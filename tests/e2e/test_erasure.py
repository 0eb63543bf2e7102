"""End to end: a forgotten supporter is nowhere, on disk or in a dump, and a rebuild does not
bring them back (issue 14, "Tests").

The three services run as processes on the test broker and a database of the test's own
(so the dump and the rebuild hold this test's supporter and no other test's), mailing the
SMTP sink.  The topics are created with the tests' erasure bound (TEST_ERASURE_BOUND_S).
Each test first proves the data WAS where the design puts it (the contact in contacts.v1's
segment files, sealed in notify's table), then that after the bound it is nowhere: not in
any segment file of any topic of the test (DLQs included), not in ``pg_dump``, not in a
rebuild's database, and the rebuild's SMTP sink got nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from clameur.topics import Topics
from devstack.databases import drop_database
from devstack.mailsink import SmtpSink
from devstack.processes import poll
from tests.conftest import TEST_ERASURE_BOUND_S, Infra
from tests.e2e.stack import (
    ADMIN,
    OwnStack,
    Supporter,
    case_document,
    confirmation_links,
    create_case,
    fetchval,
    sealed_contact,
)
from tests.privacy import broker_data_dir, pg_dump_contains, topic_data_contains
from tests.support import ROOT, wait_until

pytestmark = pytest.mark.slow

MARGIN_S = 20.0
"""After ``completes_at``: the broker's cleaner and retention checks run every second in the
test profile; a loaded machine may be late by a few more."""

EXPIRY_S = 12.0
"""The expiry variant's confirmation expiry: long enough to prove where the data is first."""

HOW = {
    "erased": {},
    "rejected": {},
    "expired": {
        "CLAMEUR_CONFIRMATION_EXPIRY_S": str(EXPIRY_S),
        "CLAMEUR_RETENTION_INTERVAL_S": "1",
        "CLAMEUR_TALLY_EXPIRY_INTERVAL_S": "1",
        "CLAMEUR_TALLY_EXPIRY_GRACE_S": "0",
    },
}


@pytest.mark.parametrize("how", sorted(HOW))
def test_a_forgotten_supporter_is_nowhere_after_the_bound_nor_after_a_rebuild(
    how: str,
    infra: Infra,
    topics: Topics,
    own_stack: Callable[..., OwnStack],
    smtp_sink: SmtpSink,
    new_id: Callable[..., str],
) -> None:
    supporter, case_id = Supporter.unique(), new_id("atena")
    disk = broker_data_dir(infra, topics.prefix)
    own = own_stack(**HOW[how])
    database_url, name = own.database_url, own.database
    with own.running() as services:
        tally, notify = services["tally"].url, services["notify"].url
        create_case(tally, case_id, confirmation="email")
        links = _signed_and_mailed(services["intake"].url, notify, case_id, supporter, smtp_sink)
        _prove_it_is_where_the_design_says(disk, topics, database_url, name, infra, supporter)
        if how == "erased":
            _confirm(links["confirm"], tally, case_id)
        before = _counts(tally, case_id)
        completes_at = FORGET[how](notify, database_url, supporter, links)
        expected = before if how == "erased" else {"total": 0, "pending": 0}
        wait_until(lambda: _counts(tally, case_id) == expected, timeout=30, what=f"counts {expected}")
        _prove_it_is_nowhere(disk, topics, infra, name, supporter, completes_at)
        assert _counts(tally, case_id) == expected, "the counts did not move with the erasure"
        assert _counts(tally, case_id, admin=True) == expected
    _prove_a_rebuild_does_not_bring_them_back(
        own.env, infra, supporter, case_id, expected, erased=how != "expired"
    )


def _signed_and_mailed(
    intake: str, notify: str, case_id: str, supporter: Supporter, sink: SmtpSink
) -> dict[str, str]:
    """Signs (once intake knows the case) and returns the links of the confirmation email."""

    def signed() -> bool:
        answer = httpx.post(f"{intake}/v1/cases/{case_id}/signatures", json=supporter.form(), timeout=10)
        assert answer.status_code in (202, 404), answer.text
        return answer.status_code == 202 and answer.json()["status"] == "pending_confirmation"

    wait_until(signed, timeout=30, what="intake to take the signature (it learns of cases from cases.v1)")
    wait_until(lambda: len(sink.to(supporter.email)) == 1, timeout=45, what="the confirmation email")
    return confirmation_links(sink.to(supporter.email)[0])


def _prove_it_is_where_the_design_says(
    disk: Path, topics: Topics, database_url: str, name: str, infra: Infra, supporter: Supporter
) -> None:
    """The precondition: the contact IS in contacts.v1's segments and sealed in notify."""
    on_disk: dict[str, bytes] = {}

    def contact_on_disk() -> bool:
        on_disk.update(topic_data_contains(disk, topics.contacts, [supporter.email.encode()]))
        return bool(on_disk)

    wait_until(contact_on_disk, timeout=10, what="the contact in contacts.v1's segment files")
    segment = next(iter(on_disk))
    assert Path(segment).parent.name.startswith(topics.contacts), segment
    assert supporter.first_name.encode() in Path(segment).read_bytes(), "the first name travels with it"
    assert topic_data_contains(disk, topics.prefix, supporter.never_published) == {}, "never published"
    wait_until(
        lambda: sealed_contact(database_url, supporter.key) is not None,
        timeout=20,
        what="notify to hold the sealed contact",
    )
    sealed = sealed_contact(database_url, supporter.key)
    assert sealed is not None and supporter.email.encode() not in sealed
    assert pg_dump_contains(infra.server_dsn, name, supporter.needles) == {}, "sealed at rest, or never kept"


def _prove_it_is_nowhere(
    disk: Path, topics: Topics, infra: Infra, name: str, supporter: Supporter, completes_at: datetime
) -> None:
    """After ``completes_at``: no segment of any of the test's topics (DLQs too), no dump."""
    left: dict[str, bytes] = {}

    def gone_from_disk() -> bool:
        left.clear()
        left.update(topic_data_contains(disk, topics.prefix, supporter.needles))
        return not left

    wait_until(
        lambda: datetime.now(UTC) >= completes_at,
        timeout=TEST_ERASURE_BOUND_S + 5,
        what="completes_at to pass",
    )
    deadline = completes_at + timedelta(seconds=MARGIN_S)
    gone = poll(gone_from_disk, timeout=max(1.0, (deadline - datetime.now(UTC)).total_seconds()), every=0.5)
    assert gone, f"still on disk at completes_at + {MARGIN_S} s: {left}"
    assert pg_dump_contains(infra.server_dsn, name, supporter.needles) == {}


def _erase(notify: str, _database_url: str, supporter: Supporter, _links: Mapping[str, str]) -> datetime:
    answer = httpx.post(
        f"{notify}/v1/admin/supporters/erase", headers=ADMIN, json={"email": supporter.email}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "erased"
    assert body["erased"] == {"contact": 1, "subscriptions": 1, "pending_deliveries": 0}
    assert "still counted" in body["remains"]["signatures"] and body["remains"]["suppression"] is False
    completes_at = datetime.fromisoformat(body["completes_at"])
    assert completes_at <= datetime.now(UTC) + timedelta(seconds=TEST_ERASURE_BOUND_S), "within the bound"
    return completes_at


def _reject(_notify: str, database_url: str, supporter: Supporter, links: Mapping[str, str]) -> datetime:
    page = httpx.post(links["reject"], timeout=30)
    assert page.status_code == 200, page.text
    assert sealed_contact(database_url, supporter.key) is None, "forgotten when the page answers"
    return datetime.now(UTC) + timedelta(seconds=TEST_ERASURE_BOUND_S)


def _expire(_notify: str, database_url: str, supporter: Supporter, _links: Mapping[str, str]) -> datetime:
    wait_until(
        lambda: sealed_contact(database_url, supporter.key) is None,
        timeout=EXPIRY_S + 30,
        what="the retention job to forget the unconfirmed supporter",
    )
    return datetime.now(UTC) + timedelta(seconds=TEST_ERASURE_BOUND_S)


FORGET: dict[str, Callable[[str, str, Supporter, Mapping[str, str]], datetime]] = {
    "erased": _erase,
    "rejected": _reject,
    "expired": _expire,
}


def _confirm(link: str, tally: str, case_id: str) -> None:
    assert httpx.get(link, timeout=10).status_code == 200
    wait_until(lambda: _counts(tally, case_id)["total"] == 1, timeout=30, what="the confirmation counted")


def _counts(tally: str, case_id: str, *, admin: bool = False) -> dict[str, int]:
    document = case_document(tally, case_id, admin=admin)
    return {"total": document["total"], "pending": document["pending"]}


def _prove_a_rebuild_does_not_bring_them_back(
    env: Mapping[str, str],
    infra: Infra,
    supporter: Supporter,
    case_id: str,
    expected: Mapping[str, int],
    *,
    erased: bool,
) -> None:
    """``python -m devstack rebuild --profile test --keep`` on the test's Kafka, database and
    topics: it exits 0 (counts equal, its sink got no email) and its notify holds no contact."""
    ran = subprocess.run(
        [sys.executable, "-m", "devstack", "rebuild", "--profile", "test", "--keep"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    kept = re.search(r"rebuild: kept (\S+)", ran.stdout)
    assert kept is not None, ran.stdout + ran.stderr
    rebuilt_url = kept.group(1)
    try:
        assert "rebuild: caught up" in ran.stdout, ran.stdout
        assert "emails the rebuild tried to send: 0 " in ran.stdout, ran.stdout
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert sealed_contact(rebuilt_url, supporter.key) is None, "the rebuild restored the contact"
        held = "SELECT count(*) FROM notify.{} WHERE supporter_key = $1"
        assert fetchval(rebuilt_url, held.format("deliveries"), supporter.key) == 0, "nothing to send them"
        # SupporterErased (erasure, "It wasn't me") drops the keyed subscription too; an expiry
        # announces none, so its keyed row may come back, with no contact to write to.
        if erased:
            assert fetchval(rebuilt_url, held.format("subscriptions"), supporter.key) == 0
        rebuilt = {
            "total": fetchval(
                rebuilt_url,
                "SELECT COALESCE(sum(count), 0) FROM tally.counters"
                " WHERE case_id = $1 AND dimension = 'total'",
                case_id,
            )
        }
        assert rebuilt == {"total": expected["total"]}
    finally:
        asyncio.run(drop_database(infra.server_dsn, rebuilt_url.rsplit("/", 1)[-1]))
