"""End to end: HTTP POST → counted signature → milestone email → victory → 410 and victory email.

The three services run as real processes (``python -m intake|tally|notify``) against the
real broker and database of the harness and a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from devstack.mailsink import SmtpSink
from tests.e2e.stack import confirm_by_email, create_case, declare_victory, sign, until_intake_answers
from tests.support import ServiceProcess, wait_until

pytestmark = pytest.mark.slow


def test_a_surge_is_counted_announced_and_won(
    stack: dict[str, ServiceProcess], smtp_sink: SmtpSink, new_id: Callable[..., str]
) -> None:
    intake, tally = stack["intake"].url, stack["tally"].url
    case_id = new_id("nawal")
    create_case(
        tally,
        case_id,
        milestones=[10, 20],
        actions=["signature", "letter"],
        target="Ministère de l'Intérieur du Maroc",
    )

    # Intake learns of the case from cases.v1 within a few seconds.
    until_intake_answers(202, intake, case_id, 0, email_of=_email, timeout=20)

    accepted = 1
    # Supporters 1..4 ask for news: news goes only to confirmed addresses, so each gets
    # one email asking them to confirm, and opens its link before the milestones.
    for n in range(1, 5):
        response = sign(
            intake, case_id, n, email_of=_email, consent={"updates": True}, locale="en" if n % 2 else "fr"
        )
        assert response.status_code == 202, response.text
        accepted += 1
    for n in range(1, 5):
        confirm_by_email(smtp_sink, _email(n))
    for n in range(5, 25):
        response = sign(intake, case_id, n, email_of=_email)
        assert response.status_code == 202, response.text
        accepted += 1
    # The same supporters again, with other case and spaces: accepted, not counted twice.
    for n in range(1, 6):
        response = sign(intake, case_id, n, email_of=lambda k: f"  {_email(k).upper()} ")
        assert response.status_code == 202, response.text
    # A letter is another action of the same supporter: counted once more.
    assert sign(intake, case_id, 1, email_of=_email, action="letter").status_code == 202

    def counted() -> dict[str, object]:
        return dict(httpx.get(f"{tally}/v1/cases/{case_id}", timeout=5).json())

    wait_until(
        lambda: counted()["total"] == accepted + 1, timeout=30, what="tally to count every supporter once"
    )
    case = counted()
    assert case["by_action"] == {"signature": accepted, "letter": 1}
    assert sum(case["by_country"].values()) == accepted + 1  # type: ignore[attr-defined]

    # Milestones 10 and 20 were crossed: each confirmed supporter (1..4) gets each email once,
    # after the one that asked them to confirm.
    wait_until(lambda: smtp_sink.count() >= 4 + 8, timeout=60, what="milestone emails")
    time.sleep(2)  # anything sent twice would arrive now
    for n in range(1, 5):
        received = [mail.message for mail in smtp_sink.to(_email(n))][1:]
        assert len(received) == 2, [m["Subject"] for m in received]
        assert all(m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for m in received)
    french = smtp_sink.to(_email(2))[1].message
    assert "Nawal" in str(french["Subject"])
    assert smtp_sink.count() == 4 + 8, "nobody without consent receives anything"

    # Victory: intake answers 410 with the headline within a few seconds, supporters hear the news.
    declare_victory(tally, case_id, {"fr": "Nawal est libre !", "en": "Nawal is free!"})
    until_intake_answers(410, intake, case_id, 99, email_of=_email, timeout=10)
    gone = sign(intake, case_id, 99, email_of=_email)
    assert gone.headers["content-type"].startswith("application/problem+json")
    assert "Nawal est libre !" in gone.text or "Nawal is free!" in gone.text

    wait_until(lambda: smtp_sink.count() >= 4 + 12, timeout=60, what="victory emails")
    english = [m.message for m in smtp_sink.to(_email(1)) if "free" in str(m.message["Subject"]).lower()]
    assert len(english) == 1


def _email(n: int) -> str:
    return f"supporter{n}@example.org"
