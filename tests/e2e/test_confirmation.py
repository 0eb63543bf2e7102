"""End to end, confirmed supporters (issue 13): a signature on an ``"email"`` case counts only
once its address is confirmed, "It wasn't me" takes it back out, one reminder, expiry, news
only to confirmed addresses, and one person one signature.

The three services run as processes on the harness's Kafka and Postgres, mailing a real SMTP
sink; the delays (reminder, expiry) are made short through the services' environment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import httpx
import pytest

from devstack.mailsink import SmtpSink
from tests.conftest import Infra
from tests.e2e.stack import (
    confirmation_links,
    counts_become,
    create_case,
    mails_arrive,
    public_case,
    running_stack,
    sign,
    sign_from,
)
from tests.support import ServiceProcess, wait_until

pytestmark = pytest.mark.slow

BROWSER = {"Accept": "text/html,application/xhtml+xml", "Accept-Language": "fr-FR,fr;q=0.9"}
SETTLE_S = 3.0
"""How long a test waits for an email that must not come, once the one before it has come."""

ACCEPTED = "accepted"
"""Intake's status for a signature that counts at once (a ``"none"`` case)."""

StartStack = Callable[..., dict[str, ServiceProcess]]


@pytest.fixture
def start_stack(service_env: dict[str, str], smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[StartStack]:
    """``start_stack(CLAMEUR_X="1")``: the three services with these settings added; stopped at the end."""
    with ExitStack() as stacks:

        def start(**settings: str) -> dict[str, ServiceProcess]:
            env = {**service_env, **settings}
            return stacks.enter_context(running_stack(env, smtp_sink.port, tmp_path))

        yield start


@pytest.fixture
def case_id(new_id: Callable[..., str]) -> str:
    return new_id("nawal")


def open_case(stack: dict[str, ServiceProcess], case_id: str, **fields: object) -> tuple[str, str]:
    """``case_id`` created on a started stack, with ``fields``: the URLs of its intake and tally."""
    intake, tally = stack["intake"].url, stack["tally"].url
    create_case(tally, case_id, **fields)
    return intake, tally


def _address(name: str) -> str:
    return f"{name}@example.org"


def first_signature(intake: str, case_id: str, email: str, **fields: object) -> httpx.Response:
    """The first signature on a new case: intake answers 404 until it has read the case from cases.v1."""
    answers: list[httpx.Response] = []

    def accepted() -> bool:
        answers.append(sign(intake, case_id, 0, email_of=lambda _: email, **fields))
        return answers[-1].status_code != 404

    wait_until(accepted, timeout=30, interval=0.3, what=f"intake to know {case_id}")
    return answers[-1]


def signed(
    intake: str, case_id: str, email: str, n: int, status: str = "pending_confirmation", **fields: object
) -> None:
    """Supporter ``n`` (from an address of its own) signs with ``email``: 202 and ``status``."""
    response = sign_from(intake, case_id, n, email, f"198.51.100.{n}", fields)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == status, response.text


def open_link(url: str, method: str = "GET") -> httpx.Response:
    """The link as a browser opens it (or the page's button, with ``POST``)."""
    return httpx.request(method, url, headers=BROWSER, timeout=15)


def sign_and_confirm(intake: str, tally: str, sink: SmtpSink, case_id: str, email: str, n: int) -> None:
    """Another supporter signs and confirms: once it counts, every earlier event of the case
    (same key, same partition) has been applied."""
    before = public_case(tally, case_id)
    signed(intake, case_id, email, n)
    counts_become(tally, case_id, pending=before["pending"] + 1)
    mail = mails_arrive(sink, email, 1)[0]
    assert open_link(confirmation_links(mail)["confirm"]).status_code == 200
    counts_become(tally, case_id, total=before["total"] + 1, pending=before["pending"])


def test_a_signature_counts_once_its_address_is_confirmed_however_often_the_link_is_opened(
    start_stack: StartStack, smtp_sink: SmtpSink, case_id: str
) -> None:
    intake, tally = open_case(start_stack(), case_id, confirmation="email")
    signer = _address("nawal.supporter")

    # The signer reads English on a French case: the email follows the signer, not the case.
    answer = first_signature(intake, case_id, signer, locale="en")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "pending_confirmation"
    counts_become(tally, case_id, total=0, pending=1)

    [mail] = mails_arrive(smtp_sink, signer, 1)
    assert mail.rcpt_tos == [signer]
    assert str(mail.message["Subject"]).startswith("Please confirm your signature")
    links = confirmation_links(mail)
    assert public_case(tally, case_id)["total"] == 0  # the email alone counts nothing

    thanks = open_link(links["confirm"])
    assert thanks.status_code == 200, thanks.text
    assert "Thank you" in thanks.text and "confirmed" in thanks.text
    counts_become(tally, case_id, total=1, pending=0)

    # Again, then five times at once (a mail scanner, a double click, a second device).
    assert open_link(links["confirm"]).status_code == 200
    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = list(pool.map(lambda _: open_link(links["confirm"]).status_code, range(5)))
    assert statuses == [200] * 5
    # The six repeats are on the log before a later supporter's confirmation: once that one
    # counts, they have been applied too, and added nothing.
    sign_and_confirm(intake, tally, smtp_sink, case_id, _address("later.supporter"), 2)
    case = public_case(tally, case_id)
    assert (case["total"], case["pending"], case["by_action"]) == (2, 0, {"signature": 2})


def test_it_wasnt_me_removes_the_signature_by_its_button_only_and_mail_stops(
    start_stack: StartStack, smtp_sink: SmtpSink, case_id: str
) -> None:
    intake, tally = open_case(start_stack(), case_id, confirmation="email")
    victim = _address("signed.up.by.someone.else")
    assert first_signature(intake, case_id, victim).status_code == 202
    links = confirmation_links(mails_arrive(smtp_sink, victim, 1)[0])

    # The GET (what a mail scanner does) only shows the button.
    page = open_link(links["reject"])
    assert page.status_code == 200, page.text
    assert '<form method="post"' in page.text and "<button" in page.text
    # A later supporter's confirmation counts: had the GET done anything, it would show by now.
    sign_and_confirm(intake, tally, smtp_sink, case_id, _address("real.supporter"), 2)
    assert public_case(tally, case_id)["pending"] == 1

    done = open_link(links["reject"], "POST")
    assert done.status_code == 200, done.text
    counts_become(tally, case_id, total=1, pending=0)

    # Signing with that address again brings no email; a control address gets its own.
    signed(intake, case_id, victim, 3)
    control = _address("control.supporter")
    signed(intake, case_id, control, 4)
    mails_arrive(smtp_sink, control, 1)
    time.sleep(SETTLE_S)
    assert len(smtp_sink.to(victim)) == 1


def test_one_reminder_then_none(start_stack: StartStack, smtp_sink: SmtpSink, case_id: str) -> None:
    reminder_s = 3
    stack = start_stack(CLAMEUR_CONFIRMATION_REMINDER_S=str(reminder_s))
    intake, tally = open_case(stack, case_id, confirmation="email")
    forgetful = _address("forgetful.supporter")
    assert first_signature(intake, case_id, forgetful).status_code == 202

    first, reminder = mails_arrive(smtp_sink, forgetful, 2, timeout=40)
    assert str(first.message["Subject"]).startswith("Merci de confirmer")
    assert str(reminder.message["Subject"]).startswith("Rappel")
    assert set(confirmation_links(reminder)) == {"confirm", "reject"}
    time.sleep(3 * reminder_s)  # well past another delay: no second reminder
    assert len(smtp_sink.to(forgetful)) == 2
    assert public_case(tally, case_id)["pending"] == 1


def test_an_unconfirmed_signature_expires_and_its_late_link_is_refused(
    start_stack: StartStack, smtp_sink: SmtpSink, case_id: str
) -> None:
    expiry_s = 15.0  # long enough for a prompt supporter to confirm in time on a loaded machine
    stack = start_stack(
        CLAMEUR_CONFIRMATION_EXPIRY_S=str(expiry_s),
        CLAMEUR_TALLY_EXPIRY_INTERVAL_S="1",
        CLAMEUR_TALLY_EXPIRY_GRACE_S="0",
    )
    intake, tally = open_case(stack, case_id, confirmation="email")
    late = _address("late.supporter")
    assert first_signature(intake, case_id, late).status_code == 202
    counts_become(tally, case_id, total=0, pending=1)
    [mail] = mails_arrive(smtp_sink, late, 1)
    arrived_at = time.time()  # the link was signed before this: it expires by arrived_at + expiry
    links = confirmation_links(mail)

    counts_become(tally, case_id, timeout=expiry_s + 30, total=0, pending=0)
    time.sleep(max(0.0, arrived_at + expiry_s + 1 - time.time()))
    refused = open_link(links["confirm"])
    assert refused.status_code == 410, refused.text
    assert "expiré" in refused.text
    # A supporter who confirms in time still counts, after the late click on the log: one.
    sign_and_confirm(intake, tally, smtp_sink, case_id, _address("prompt.supporter"), 2)
    assert public_case(tally, case_id)["total"] == 1


def test_no_milestone_email_goes_to_an_unconfirmed_address(
    start_stack: StartStack, smtp_sink: SmtpSink, case_id: str, infra: Infra
) -> None:
    # A "none" case: signatures count at once, but news still waits for a confirmed address.
    intake, tally = open_case(start_stack(), case_id, confirmation="none", milestones=[5])
    wants_news = {"consent": {"updates": True}}
    confirmed, unconfirmed = _address("confirmed.supporter"), _address("unconfirmed.supporter")
    assert first_signature(intake, case_id, confirmed, **wants_news).status_code == 202
    signed(intake, case_id, unconfirmed, 1, ACCEPTED, **wants_news)
    confirm_news = mails_arrive(smtp_sink, confirmed, 1)[0]
    mails_arrive(smtp_sink, unconfirmed, 1)
    assert "nouvelles" in str(confirm_news.message["Subject"])
    assert open_link(confirmation_links(confirm_news)["confirm"]).status_code == 200
    wait_until(
        lambda: asyncio.run(_confirmed_subscribers(infra.database_url, case_id)) == 1,
        timeout=30,
        what="notify to record the confirmed address",
    )

    for n in range(2, 5):  # three more, without consent: the fifth signature crosses 5
        signed(intake, case_id, _address(f"supporter{n}"), n, ACCEPTED)
    counts_become(tally, case_id, total=5)
    news = mails_arrive(smtp_sink, confirmed, 2)[1]
    assert str(news.message["Subject"]).startswith("Nous avons franchi les 5 signatures")
    time.sleep(SETTLE_S)
    assert len(smtp_sink.to(unconfirmed)) == 1, "the confirmation email only: no news"


async def _confirmed_subscribers(database_url: str, case_id: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM notify.subscriptions WHERE case_id = $1 AND confirmed_at IS NOT NULL",
                case_id,
            )
        )
    finally:
        await connection.close()


def test_gmail_aliases_are_one_supporter(start_stack: StartStack, case_id: str) -> None:
    intake, tally = open_case(start_stack(), case_id, confirmation="none", small_count_threshold=1)
    assert first_signature(intake, case_id, "a.b.c@gmail.com", country="FR").status_code == 202
    for n, alias in enumerate(["abc+1@gmail.com", "abc@googlemail.com", "A.B.C+petition@Gmail.com"], 1):
        signed(intake, case_id, alias, n, ACCEPTED, country="FR")
    # Another person signs last, from Senegal (same case, same partition): once Senegal is
    # counted, every alias before it has been applied.
    signed(intake, case_id, "abd@gmail.com", 9, ACCEPTED, country="SN")
    case = counts_become(tally, case_id, by_country={"FR": 1, "SN": 1})
    assert (case["total"], case["by_action"]) == (2, {"signature": 2})
