"""Notify against real Kafka, Postgres and SMTP (aiosmtpd), in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from notify.supporters import supporter_key

from clameur.events import utc_now
from clameur.topics import Topics
from devstack.mailsink import SmtpSink
from tests.conftest import TEST_SECRET, Infra
from tests.notify.conftest import (
    RunningNotify,
    email_of,
    milestone,
    publish_case_events,
    publish_milestone_after,
    publish_signatures,
    scrape,
    signature,
    victory,
)
from tests.support import eventually, metric

SETTLE_S = 1.5
"""After the expected mail arrived, how long an unexpected extra one gets to show up."""


async def until_received(sink: SmtpSink, count: int, within: float = 30.0) -> None:
    async def arrived() -> bool:
        return sink.count() >= count

    await eventually(arrived, within=within, what=f"{count} emails at the SMTP server")


async def test_a_milestone_reaches_exactly_the_subscribed_supporters_once_in_their_language(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id, other_case = new_id("nawal"), new_id("karim")
    await publish_signatures(
        infra,
        topics,
        [
            signature(case_id, "amina", locale="fr"),
            signature(case_id, "amina", locale="fr"),  # signed twice: one supporter
            signature(case_id, "ben", locale="en"),
            signature(case_id, "chloe", locale="fr", consent=False),  # no consent: nothing
            signature(other_case, "dara", locale="fr"),  # another case only
        ],
    )
    event = milestone(case_id)
    late = signature(case_id, "emma", locale="fr", received_at=event.occurred_at + timedelta(seconds=5))
    await publish_signatures(infra, topics, [late])  # signed after the milestone: not told about it
    await publish_case_events(infra, topics, [event])

    await until_received(smtp_sink, 2)
    await asyncio.sleep(SETTLE_S)
    assert sorted(r for mail in smtp_sink.received for r in mail.rcpt_tos) == sorted(
        [email_of("amina", case_id), email_of("ben", case_id)]
    )

    french = smtp_sink.to(email_of("amina", case_id))[0].message
    assert french["Subject"] == "Nous avons franchi les 100\u202f000 signatures pour Libérez Nawal !"
    french_text = french.get_body(("plain",))
    assert french_text is not None
    assert "Bonjour Amina" in french_text.get_content()
    assert "100\u202f012" in french_text.get_content()
    french_html = french.get_body(("html",))
    assert (
        french_html is not None
        and "Nous avons franchi les 100\u202f000 signatures" in french_html.get_content()
    )

    english = smtp_sink.to(email_of("ben", case_id))[0].message
    assert english["Subject"] == "We passed 100,000 signatures for Free Nawal!"
    english_text = english.get_body(("plain",))
    assert english_text is not None and "Hello Ben" in english_text.get_content()
    assert english.get_content_type() == "multipart/alternative"
    assert english["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert str(english["List-Unsubscribe"]).startswith("<https://clameur.example.org/v1/unsubscribe/")
    assert str(english["Message-ID"]).startswith(f"<{event.event_id}.")

    rows = await notify.deliveries(event.event_id)
    assert [row["state"] for row in rows] == ["sent", "sent"]
    metrics = await scrape(notify.client)
    assert metric(metrics, "clameur_notify_emails_sent_total", kind="milestone") == 2
    assert metric(metrics, "clameur_notify_email_attempts_total", kind="milestone") == 2
    # New (case, supporter) subscriptions: amina (once), ben, dara, emma.
    assert metric(metrics, "clameur_notify_supporters_recorded_total") == 4


async def test_the_same_event_twice_on_the_topic_sends_once(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    await publish_signatures(infra, topics, [signature(case_id, "amina"), signature(case_id, "ben")])
    event = milestone(case_id)
    await publish_case_events(infra, topics, [event, event])
    await until_received(smtp_sink, 2)
    # A replay much later (a relay that published again after a restart): still nothing.
    await publish_case_events(infra, topics, [event])
    await asyncio.sleep(SETTLE_S)
    assert smtp_sink.count() == 2
    assert len(await notify.deliveries(event.event_id)) == 2


async def test_supporters_without_consent_get_nothing(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    event = await publish_milestone_after(
        infra, topics, [signature(case_id, name, consent=False) for name in ("amina", "ben", "chloe")]
    )

    async def fanned_out() -> bool:
        return bool(
            await notify.database.fetchval(
                "SELECT fanned_out_at IS NOT NULL FROM notify.case_events WHERE event_id = $1", event.event_id
            )
        )

    await eventually(fanned_out, within=30, what="the milestone to be fanned out")
    await asyncio.sleep(SETTLE_S)
    assert smtp_sink.count() == 0
    assert await notify.deliveries(event.event_id) == []
    stored = await notify.database.fetchval(
        "SELECT count(*) FROM notify.subscriptions WHERE case_id = $1", case_id
    )
    assert stored == 0, "notify keeps no data on supporters who did not consent"


async def test_an_smtp_451_is_retried_then_delivered(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    smtp_sink.refuse(email_of("amina", case_id), 451, times=2)
    event = await publish_milestone_after(infra, topics, [signature(case_id, "amina")])

    await until_received(smtp_sink, 1)
    await asyncio.sleep(SETTLE_S)
    assert len(smtp_sink.to(email_of("amina", case_id))) == 1
    assert smtp_sink.refusals[email_of("amina", case_id)] == 2
    [row] = await notify.deliveries(event.event_id)
    assert (row["state"], row["attempts"]) == ("sent", 3)
    metrics = await scrape(notify.client)
    assert metric(metrics, "clameur_notify_emails_failed_total", kind="milestone", reason="temporary") == 2
    assert metric(metrics, "clameur_notify_email_attempts_total", kind="milestone") == 3


async def test_an_smtp_550_is_recorded_failed_and_not_retried(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    smtp_sink.refuse(email_of("amina", case_id), 550)
    signatures = [signature(case_id, "amina"), signature(case_id, "ben")]
    event = await publish_milestone_after(infra, topics, signatures)

    await until_received(smtp_sink, 1)

    async def recorded_failed() -> bool:
        rows = await notify.deliveries(event.event_id)
        return any(row["state"] == "failed" for row in rows)

    await eventually(recorded_failed, within=10, what="the 550 to be recorded")
    await asyncio.sleep(SETTLE_S)  # several retry intervals (0.2 s) go by: no retry
    assert smtp_sink.refusals[email_of("amina", case_id)] == 1
    states = {
        row["email"]: (row["state"], row["attempts"]) for row in await notify.deliveries(event.event_id)
    }
    assert states == {email_of("amina", case_id): ("failed", 1), email_of("ben", case_id): ("sent", 1)}
    metrics = await scrape(notify.client)
    assert metric(metrics, "clameur_notify_emails_failed_total", kind="milestone", reason="permanent") == 1
    assert metric(metrics, "clameur_notify_emails_sent_total", kind="milestone") == 1


async def test_a_one_click_unsubscribe_before_a_victory_means_no_victory_mail(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    await publish_milestone_after(
        infra, topics, [signature(case_id, "amina"), signature(case_id, "ben", locale="en")]
    )
    await until_received(smtp_sink, 2)

    amina = smtp_sink.to(email_of("amina", case_id))[0].message
    link = str(amina["List-Unsubscribe"]).strip("<>")
    path = link.removeprefix("https://clameur.example.org")
    confirmation = await notify.client.get(path)
    assert confirmation.status_code == 200
    assert "Me désabonner" in confirmation.text and 'method="post"' in confirmation.text

    # What a mail provider sends for RFC 8058 one-click: no cookie, no login.
    one_click = {"content-type": "application/x-www-form-urlencoded"}
    first = await notify.client.post(path, content=b"List-Unsubscribe=One-Click", headers=one_click)
    again = await notify.client.post(path, content=b"List-Unsubscribe=One-Click", headers=one_click)
    assert (first.status_code, again.status_code) == (200, 200)
    assert "location" not in first.headers
    assert "désabonnement" in first.text.lower() or "c'est fait" in first.text.lower()

    await publish_case_events(infra, topics, [victory(case_id)])
    await until_received(smtp_sink, 3)
    await asyncio.sleep(SETTLE_S)
    assert len(smtp_sink.to(email_of("amina", case_id))) == 1, "no victory mail after unsubscribing"
    [victory_mail] = [
        m for m in smtp_sink.to(email_of("ben", case_id)) if "free" in str(m.message["Subject"])
    ]
    assert victory_mail.message["Subject"] == "Nawal is free: thank you!"
    metrics = await scrape(notify.client)
    assert metric(metrics, "clameur_notify_unsubscribes_total", scope="all") == 1


async def test_a_forged_or_altered_unsubscribe_token_is_refused(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    await publish_milestone_after(infra, topics, [signature(case_id, "amina")])
    await until_received(smtp_sink, 1)
    link = str(smtp_sink.received[0].message["List-Unsubscribe"]).strip("<>")
    path = link.removeprefix("https://clameur.example.org")
    altered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    forged = "/v1/unsubscribe/eyJzIjoiMDAwMCJ9.forged-signature"
    for bad in (altered, forged):
        refused = await notify.client.post(bad, content=b"List-Unsubscribe=One-Click")
        assert refused.status_code == 400
        assert refused.headers["content-type"].startswith("application/problem+json")
        page = await notify.client.get(bad, headers={"accept": "text/html"})
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    unsubscribed = await notify.database.fetchval(
        "SELECT count(*) FROM notify.unsubscriptions WHERE supporter_key = $1",
        supporter_key(TEST_SECRET, email_of("amina", case_id)),
    )
    assert unsubscribed == 0


async def test_names_with_crlf_or_encoded_newlines_add_no_header(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    hostile = {
        "crlf": "Eve\r\nBcc: spy@evil.example",
        "encoded": "=?UTF-8?Q?Mallory=0D=0ABcc:_spy@evil.example?=",
        "separator": "Trudy\u2028X-Injected: yes",
        "encoded-b": "=?utf-8?b?" + "T3NjYXINClgtSW5qZWN0ZWQ6IHllcw==" + "?=",
    }
    await publish_milestone_after(
        infra, topics, [signature(case_id, name, first_name=first) for name, first in hostile.items()]
    )
    await until_received(smtp_sink, len(hostile))
    await asyncio.sleep(SETTLE_S)
    assert smtp_sink.count() == len(hostile)
    expected_headers = {
        "to",
        "date",
        "message-id",
        "list-unsubscribe",
        "from",
        "subject",
        "list-unsubscribe-post",
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-language",
    }
    for mail in smtp_sink.received:
        assert len(mail.rcpt_tos) == 1 and mail.rcpt_tos[0].endswith(f".{case_id}@example.org")
        head = mail.raw.split(b"\r\n\r\n", 1)[0]
        names = {
            line.split(b":", 1)[0].decode().lower() for line in head.split(b"\r\n") if line[:1] not in b" \t"
        }
        assert names == expected_headers, names
        parsed = mail.message
        assert parsed["Bcc"] is None and parsed["X-Injected"] is None
        assert "\n" not in str(parsed["To"]) and "\r" not in str(parsed["To"])


async def test_erasure_forgets_the_supporter_and_a_replay_does_not_bring_them_back(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    amina = signature(case_id, "amina", received_at=utc_now() - timedelta(minutes=1))
    await publish_signatures(infra, topics, [amina, signature(case_id, "ben")])

    async def recorded() -> bool:
        return bool(
            await notify.database.fetchval(
                "SELECT count(*) FROM notify.subscriptions s JOIN notify.contacts USING (supporter_key)"
                " WHERE s.case_id = $1",
                case_id,
            )
            == 2
        )

    await eventually(recorded, within=30, what="both supporters recorded")
    body = {"email": f"  {email_of('amina', case_id).upper()} "}  # as typed: case and spaces vary
    assert (await notify.client.post("/v1/admin/supporters/erase", json=body)).status_code == 401
    wrong = {"authorization": "Bearer not-the-token"}
    assert (
        await notify.client.post("/v1/admin/supporters/erase", json=body, headers=wrong)
    ).status_code == 401
    for headers in ({}, wrong):
        refused = await notify.client.post("/v1/admin/supporters/erase", json=body, headers=headers)
        assert refused.headers["www-authenticate"] == 'Bearer realm="clameur-admin"'
        assert refused.headers["content-type"] == "application/problem+json"
    admin = {"authorization": f"Bearer {notify.settings.admin_token.get_secret_value()}"}
    erased = await notify.client.post("/v1/admin/supporters/erase", json=body, headers=admin)
    assert erased.status_code == 200 and erased.json()["status"] == "erased"
    assert erased.json()["erased"]["contact"] == 1
    assert (
        await notify.database.fetchval(
            "SELECT count(*) FROM notify.contacts WHERE supporter_key = $1", amina.supporter_key
        )
        == 0
    )
    assert (
        await notify.database.fetchval(
            "SELECT count(*) FROM notify.erasures WHERE supporter_key = $1", amina.supporter_key
        )
        == 1
    )

    # A replay of the old signature (a consumer rebuilt from the topic) must not re-create her.
    await publish_milestone_after(infra, topics, [amina])
    await until_received(smtp_sink, 1)
    await asyncio.sleep(SETTLE_S)
    assert [mail.rcpt_tos for mail in smtp_sink.received] == [[email_of("ben", case_id)]]
    assert (
        await notify.database.fetchval(
            "SELECT count(*) FROM notify.subscriptions WHERE supporter_key = $1", amina.supporter_key
        )
        == 0
    )
