"""Confirmation emails, the confirm / "It wasn't me" pages, and news only to confirmed supporters.

Real Kafka, Postgres and SMTP (aiosmtpd); notify in this process.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from notify.tokens import ConfirmationRequest, ConfirmationSigner

from clameur.events import (
    SignatureAccepted,
    SignatureConfirmed,
    SignaturesRejected,
    SupportersInvalidated,
    SupportersRestored,
    decode_signature_log_event,
    utc_now,
)
from clameur.topics import Topics
from devstack.mailsink import Received, SmtpSink
from tests.conftest import TEST_SECRET, Infra
from tests.notify.conftest import (
    CONTACTS,
    RunningNotify,
    email_of,
    milestone,
    produce,
    publish_case_events,
    publish_signatures,
    signature,
    signatures_read,
)
from tests.notify.forgetting import publish_contacts
from tests.support import eventually, read_topic

SETTLE_S = 1.5
LINK = re.compile(r"https://clameur\.example\.org/v1/(confirm|reject)/([A-Za-z0-9_.\-]+)")


@pytest.fixture
def notify_env(notify_env: dict[str, str]) -> dict[str, str]:
    # A rate cap low enough that a mailing of a few hundred takes seconds (the claim-order test).
    return {**notify_env, "CLAMEUR_NOTIFY_RATE_PER_S": "100"}


async def until_received(sink: SmtpSink, count: int, within: float = 30.0) -> None:
    async def arrived() -> bool:
        return sink.count() >= count

    await eventually(arrived, within=within, what=f"{count} emails at the SMTP server")


def links_in(mail: Received) -> dict[str, str]:
    text = mail.message.get_body(("plain",))
    assert text is not None
    found = {action: token for action, token in LINK.findall(text.get_content())}
    assert set(found) == {"confirm", "reject"}, "both links, token in the path"
    return found


async def sign_awaiting(
    infra: Infra, topics: Topics, case_id: str, name: str, *, locale: str = "fr", contact_first: bool = False
) -> SignatureAccepted:
    """A signature on an ``"email"`` case and its contact, in the order asked."""
    signed = signature(case_id, name, locale=locale, consent=False, awaits_confirmation=True)

    async def contact() -> None:
        await publish_contacts(infra.kafka, topics, [CONTACTS[signed.supporter_key]])

    async def sign() -> None:
        await produce(infra.kafka, topics.signatures, [signed], key=lambda e: case_id)

    for step in (contact, sign) if contact_first else (sign, contact):
        await step()
        await asyncio.sleep(0.5)  # each applied on its own: the pairing is across two batches
    return signed


async def asked_to_confirm(
    infra: Infra, topics: Topics, smtp_sink: SmtpSink, case_id: str, name: str
) -> tuple[SignatureAccepted, dict[str, str]]:
    """``name`` signs on an ``"email"`` case and is the first to get the email asking to confirm:
    the signature, and the email's links."""
    signed = await sign_awaiting(infra, topics, case_id, name)
    await until_received(smtp_sink, 1)
    return signed, links_in(smtp_sink.received[0])


async def confirmations_on_topic(infra: Infra, topics: Topics, at_least: int) -> list[Any]:
    records = await read_topic(infra.kafka, topics.signatures, at_least=at_least)
    events = [decode_signature_log_event(r.value) for r in records]
    return [e for e in events if isinstance(e, SignatureConfirmed | SignaturesRejected)]


@pytest.mark.parametrize("contact_first", [True, False], ids=["contact-first", "signature-first"])
async def test_one_confirmation_email_in_the_signers_language_whatever_arrives_first(
    notify: RunningNotify,
    smtp_sink: SmtpSink,
    infra: Infra,
    topics: Topics,
    new_id: Callable[..., str],
    contact_first: bool,
) -> None:
    case_id = new_id("nawal")
    await sign_awaiting(infra, topics, case_id, "amina", locale="fr", contact_first=contact_first)
    await sign_awaiting(infra, topics, case_id, "ben", locale="en", contact_first=contact_first)
    # Signed again (another action): the same confirmation, no second email.
    await produce(
        infra.kafka,
        topics.signatures,
        [signature(case_id, "amina", consent=False, awaits_confirmation=True)],
        key=lambda e: case_id,
    )
    await until_received(smtp_sink, 2)
    await signatures_read(infra, topics)
    await asyncio.sleep(SETTLE_S)
    assert smtp_sink.count() == 2

    [french] = smtp_sink.to(email_of("amina", case_id))
    assert french.message["Subject"] == "Merci de confirmer votre signature"
    assert french.message["Content-Language"] == "fr"
    body = french.message.get_body(("plain",))
    assert body is not None and "Bonjour Amina" in body.get_content()
    assert "?" not in "".join(LINK.findall(body.get_content())[0])
    links_in(french)
    [english] = smtp_sink.to(email_of("ben", case_id))
    assert english.message["Subject"] == "Please confirm your signature"
    html = english.message.get_body(("html",))
    assert html is not None and "It wasn't me" in html.get_content()
    links_in(english)


async def test_opening_the_confirm_link_publishes_a_confirmation_per_click_and_confirms_once(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    amina, links = await asked_to_confirm(infra, topics, smtp_sink, case_id, "amina")
    token = links["confirm"]

    first = await notify.client.get(f"/v1/confirm/{token}", headers={"accept": "text/html"})
    again = await notify.client.get(f"/v1/confirm/{token}")
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.headers["content-type"].startswith("text/html") and "Merci" in first.text
    assert '<meta name="viewport"' in first.text and 'lang="fr"' in first.text

    published = await confirmations_on_topic(infra, topics, at_least=3)
    assert [(type(e), e.case_id, e.supporter_key) for e in published] == [
        (SignatureConfirmed, case_id, amina.supporter_key)
    ] * 2

    async def confirmed() -> bool:
        at = await notify.database.fetchval(
            "SELECT confirmed_at FROM notify.subscriptions WHERE case_id = $1 AND supporter_key = $2",
            case_id,
            amina.supporter_key,
        )
        return at is not None

    await eventually(confirmed, within=15, what="notify to read the confirmation")
    first_confirmed_at = await notify.database.fetchval(
        "SELECT confirmed_at FROM notify.subscriptions WHERE supporter_key = $1", amina.supporter_key
    )
    assert first_confirmed_at == min(e.occurred_at for e in published), "the first confirmation holds"


async def test_it_wasnt_me_changes_nothing_on_get_and_rejects_on_post(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    amina, links = await asked_to_confirm(infra, topics, smtp_sink, case_id, "amina")
    path = f"/v1/reject/{links['reject']}"

    shown = await notify.client.get(path)  # what a mail scanner does
    assert shown.status_code == 200 and 'method="post"' in shown.text and f'action="{path}"' in shown.text
    assert await confirmations_on_topic(infra, topics, at_least=0) == [], "the GET published nothing"
    assert (
        await notify.database.fetchval(
            "SELECT count(*) FROM notify.subscriptions WHERE supporter_key = $1", amina.supporter_key
        )
        == 1
        and await notify.database.fetchval(
            "SELECT count(*) FROM notify.contacts WHERE supporter_key = $1", amina.supporter_key
        )
        == 1
    ), "the GET changed nothing"

    done = await notify.client.post(path)
    assert done.status_code == 200 and "C'est fait" in done.text
    [rejected] = await confirmations_on_topic(infra, topics, at_least=2)
    assert isinstance(rejected, SignaturesRejected) and rejected.supporter_key == amina.supporter_key

    async def forgotten() -> bool:
        left = await notify.database.fetchval(
            "SELECT (SELECT count(*) FROM notify.subscriptions WHERE supporter_key = $1)"
            " + (SELECT count(*) FROM notify.contacts WHERE supporter_key = $1)",
            amina.supporter_key,
        )
        return bool(left == 0)

    await eventually(forgotten, within=15, what="the supporter's rows to go")


async def test_expired_forged_or_misused_links_are_refused_with_a_page_saying_what_to_do(
    notify: RunningNotify, new_id: Callable[..., str], infra: Infra, topics: Topics
) -> None:
    signer = ConfirmationSigner(TEST_SECRET)
    past = int((utc_now() - timedelta(seconds=1)).timestamp())
    expired = signer.sign(ConfirmationRequest("confirm", "k" * 64, new_id("nawal"), "fr", past))
    page = await notify.client.get(f"/v1/confirm/{expired}", headers={"accept": "text/html"})
    assert page.status_code == 410 and "Ce lien a expiré" in page.text and "signez à nouveau" in page.text
    assert (
        (await notify.client.get(f"/v1/confirm/{expired}"))
        .headers["content-type"]
        .startswith("application/problem+json")
    )

    future = int((utc_now() + timedelta(days=1)).timestamp())
    reject_token = signer.sign(ConfirmationRequest("reject", "k" * 64, new_id("nawal"), "en", future))
    other_secret = ConfirmationSigner("not-the-secret").sign(
        ConfirmationRequest("confirm", "k" * 64, new_id("nawal"), "en", future)
    )
    for path in (
        f"/v1/confirm/{reject_token}",  # a reject link never confirms
        f"/v1/confirm/{other_secret}",
        f"/v1/confirm/{reject_token[:-4]}AAAA",
        f"/v1/confirm/{uuid4()}",
    ):
        refused = await notify.client.get(path, headers={"accept": "text/html"})
        assert refused.status_code == 400 and "not valid" in refused.text, path
    forged_post = await notify.client.post(f"/v1/reject/{other_secret}")
    assert forged_post.status_code == 400
    assert await confirmations_on_topic(infra, topics, at_least=0) == []


async def test_news_goes_only_to_confirmed_supporters_and_not_to_invalidated_ones(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    await publish_signatures(infra, topics, [signature(case_id, "ben"), signature(case_id, "dara")])
    # Chloé asked for news on an "email" case and never confirmed: her confirmation email only.
    chloe = signature(case_id, "chloe", awaits_confirmation=True)
    await produce(infra.kafka, topics.signatures, [chloe], key=lambda e: case_id)
    await publish_contacts(infra.kafka, topics, [CONTACTS[chloe.supporter_key]])
    await until_received(smtp_sink, 1)
    assert [m.rcpt_tos for m in smtp_sink.received] == [[email_of("chloe", case_id)]]
    dara = signature(case_id, "dara")
    invalidation = uuid4()
    await publish_case_events(
        infra,
        topics,
        [
            SupportersInvalidated(
                case_id=case_id, invalidation_id=invalidation, supporter_keys=(dara.supporter_key,)
            )
        ],
    )
    first = milestone(case_id, 1000)
    await publish_case_events(infra, topics, [first])
    await until_received(smtp_sink, 2)
    await asyncio.sleep(SETTLE_S)
    assert sorted(r for m in smtp_sink.received[1:] for r in m.rcpt_tos) == [email_of("ben", case_id)]

    restored = SupportersRestored(
        case_id=case_id, invalidation_id=invalidation, supporter_keys=(dara.supporter_key,)
    )
    await publish_case_events(infra, topics, [restored])
    second = milestone(case_id, 2000, occurred_at=utc_now() + timedelta(seconds=1))
    await publish_case_events(infra, topics, [second])
    await until_received(smtp_sink, 4)
    await asyncio.sleep(SETTLE_S)
    assert sorted(r for m in smtp_sink.received[2:] for r in m.rcpt_tos) == sorted(
        [email_of("ben", case_id), email_of("dara", case_id)]
    )
    assert len(smtp_sink.to(email_of("chloe", case_id))) == 1, "no news to an unconfirmed address"


async def test_a_large_mailing_does_not_delay_a_confirmation_email(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    supporters = 400  # at 100 emails/s: four seconds of mailing
    await publish_signatures(infra, topics, [signature(case_id, f"s{n}") for n in range(supporters)])
    event = milestone(case_id)
    await publish_case_events(infra, topics, [event])
    await until_received(smtp_sink, 50)

    async def pending_news() -> int:
        return int(
            await notify.database.fetchval(
                "SELECT count(*) FROM notify.deliveries"
                " WHERE event_id = $1 AND state IN ('pending', 'sending')",
                event.event_id,
            )
        )

    assert await pending_news() > 200, "the mailing is under way when the signature comes"
    late = await sign_awaiting(infra, topics, new_id("karim"), "zoe", contact_first=True)
    await until_received(smtp_sink, supporters + 1, within=60)
    recipients = [m.rcpt_tos[0] for m in smtp_sink.received]
    position = recipients.index(CONTACTS[late.supporter_key].email)
    assert position < supporters - 100, f"the confirmation went out at {position} of {supporters + 1}"


async def test_on_a_case_without_confirmation_asking_for_news_gets_one_email_asking_about_news(
    notify: RunningNotify, smtp_sink: SmtpSink, infra: Infra, topics: Topics, new_id: Callable[..., str]
) -> None:
    case_id = new_id("nawal")
    signed = signature(case_id, "ben", locale="en", consent=True, awaits_confirmation=False)
    await produce(infra.kafka, topics.signatures, [signed, signed], key=lambda e: case_id)
    await publish_contacts(infra.kafka, topics, [CONTACTS[signed.supporter_key]])
    await until_received(smtp_sink, 1)
    await asyncio.sleep(SETTLE_S)
    [mail] = smtp_sink.to(email_of("ben", case_id))
    assert mail.message["Subject"] == "Confirm that you want news of this case"
    text = mail.message.get_body(("plain",))
    assert text is not None and "Your signature counts already" in text.get_content()
    links_in(mail)
