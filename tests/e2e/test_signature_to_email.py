"""End to end: HTTP POST → counted signature → milestone email → victory → 410 and victory email.

The three services run as real processes (``python -m intake|tally|notify``) against the
real broker and database of the harness and a real SMTP server (aiosmtpd).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import TEST_ADMIN_TOKEN
from tests.e2e.conftest import Inbox
from tests.support import ServiceProcess, wait_until

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


def _sign(
    intake: str, case_id: str, n: int, *, email_of: Callable[[int], str], **fields: object
) -> httpx.Response:
    body = {
        "first_name": f"Supporter{n}",
        "last_name": "Test",
        "email": email_of(n),
        "country": ["FR", "MA", "BE"][n % 3],
        **fields,
    }
    return httpx.post(f"{intake}/v1/cases/{case_id}/signatures", json=body, timeout=10)


def test_a_surge_is_counted_announced_and_won(
    stack: dict[str, ServiceProcess], inbox: tuple[Inbox, int], new_id: Callable[..., str]
) -> None:
    mailbox, _ = inbox
    intake, tally = stack["intake"].url, stack["tally"].url
    case_id = new_id("nawal")
    created = httpx.post(
        f"{tally}/v1/admin/cases",
        headers=ADMIN,
        json={
            "id": case_id,
            "title": {
                "fr": "Nawal Benaissa : stop au harcèlement",
                "en": "Nawal Benaissa: stop the harassment",
            },
            "goal": 50,
            "milestones": [10, 20],
            "actions": ["signature", "letter"],
            "default_locale": "fr",
            "target": "Ministère de l'Intérieur du Maroc",
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text

    # Intake learns of the case from cases.v1 within a few seconds.
    wait_until(
        lambda: _sign(intake, case_id, 0, email_of=_email).status_code == 202,
        timeout=20,
        what="intake to know the new case",
    )

    def _email_of(n: int) -> str:
        return _email(n)

    accepted = 1
    for n in range(1, 25):
        consent = {"consent": {"updates": True}, "locale": "en" if n % 2 else "fr"} if n <= 4 else {}
        response = _sign(intake, case_id, n, email_of=_email_of, **consent)
        assert response.status_code == 202, response.text
        accepted += 1
    # The same supporters again, with other case and spaces: accepted, not counted twice.
    for n in range(1, 6):
        response = _sign(intake, case_id, n, email_of=lambda k: f"  {_email(k).upper()} ")
        assert response.status_code == 202, response.text
    # A letter is another action of the same supporter: counted once more.
    assert _sign(intake, case_id, 1, email_of=_email_of, action="letter").status_code == 202

    def counted() -> dict[str, object]:
        return dict(httpx.get(f"{tally}/v1/cases/{case_id}", timeout=5).json())

    wait_until(
        lambda: counted()["total"] == accepted + 1, timeout=30, what="tally to count every supporter once"
    )
    case = counted()
    assert case["by_action"] == {"signature": accepted, "letter": 1}
    assert sum(case["by_country"].values()) == accepted + 1  # type: ignore[attr-defined]

    # Milestones 10 and 20 were crossed: each consenting supporter (1..4) gets each email once.
    wait_until(lambda: len(mailbox.messages) >= 8, timeout=60, what="milestone emails")
    time.sleep(2)  # anything sent twice would arrive now
    for n in range(1, 5):
        received = mailbox.to(_email(n))
        assert len(received) == 2, [m["Subject"] for m in received]
        assert all(m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for m in received)
    french = mailbox.to(_email(2))[0]
    assert "Nawal" in str(french["Subject"])
    assert len(mailbox.messages) == 8, "nobody without consent receives anything"

    # Victory: intake answers 410 with the headline within a few seconds, supporters hear the news.
    victory = httpx.post(
        f"{tally}/v1/admin/cases/{case_id}/victory",
        headers=ADMIN,
        json={
            "headline": {"fr": "Nawal est libre !", "en": "Nawal is free!"},
            "message": {"fr": "Merci à toutes et tous.", "en": "Thank you all."},
        },
        timeout=10,
    )
    assert victory.status_code == 200, victory.text
    wait_until(
        lambda: _sign(intake, case_id, 99, email_of=_email).status_code == 410,
        timeout=10,
        what="intake to answer 410 after the victory",
    )
    gone = _sign(intake, case_id, 99, email_of=_email)
    assert gone.headers["content-type"].startswith("application/problem+json")
    assert "Nawal est libre !" in gone.text or "Nawal is free!" in gone.text

    wait_until(lambda: len(mailbox.messages) >= 12, timeout=60, what="victory emails")
    english = [m for m in mailbox.to(_email(1)) if "free" in str(m["Subject"]).lower()]
    assert len(english) == 1


def _email(n: int) -> str:
    return f"supporter{n}@example.org"
