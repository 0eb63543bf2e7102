"""Rendering a milestone or a victory into an email: pure, no services."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from uuid import UUID

import pytest
from notify.messages import (
    TEMPLATES_DIR,
    ConfirmationKind,
    ConfirmationRenderer,
    MessageRenderer,
    Recipient,
    SenderIdentity,
    Templates,
    UnsendableEmail,
    choose_locale,
    clean_display_text,
    format_count,
    message_id,
)
from notify.tokens import ConfirmationAction, ConfirmationRequest, ConfirmationSigner, TokenSigner

from clameur.events import MilestoneReached, VictoryDeclared

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
KEY = "a" * 64


SENDER = SenderIdentity("news@clameur.example.org", "Clameur", "https://clameur.example.org")


@pytest.fixture(scope="module")
def renderer() -> MessageRenderer:
    return MessageRenderer(Templates(), SENDER, TokenSigner("unit-test-secret"))


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parse_with_single_headers(data: bytes) -> EmailMessage:
    """``data`` parsed, once its head is shown to hold no Bcc and no header twice."""
    head = data.split(b"\r\n\r\n", 1)[0]
    fields = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in fields
    assert len(fields) == len(set(fields)), "no header appears twice"
    return parse(data)


def text_of(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content())


def nawal_milestone(title: dict[str, str] | None = None, default_locale: str = "fr") -> MilestoneReached:
    return MilestoneReached(
        event_id=UUID("6b0f3c1e-1111-2222-3333-444455556666"),
        case_id="nawal",
        threshold=100_000,
        total=100_012,
        case_title=title or {"fr": "Nawal", "en": "Nawal"},
        default_locale=default_locale,
    )


def test_numbers_follow_the_locale_as_babel_writes_them() -> None:
    assert format_count(100_000, "fr") == "100\u202f000"  # Babel: narrow no-break space
    assert format_count(100_000, "en") == "100,000"
    assert format_count(100_000, "de-CH") == "100\u2019000"
    assert format_count(100_000, "xx-nowhere") == "100,000"  # unknown: the fallback's way


def test_a_french_supporter_gets_the_french_milestone(renderer: MessageRenderer) -> None:
    sent = renderer.render(nawal_milestone(), Recipient(KEY, "amina@example.org", "Amina", "fr"), NOW)
    message = parse(sent.data)
    assert message["Subject"] == "Nous avons franchi les 100\u202f000 signatures pour Nawal !"
    assert "Bonjour Amina" in text_of(message)
    assert "100\u202f000" in text_of(message, "html")
    assert message["Content-Language"] == "fr"
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert sent.envelope_to == "amina@example.org" and sent.kind == "milestone"


def test_an_english_supporter_gets_english_numbers_and_words(renderer: MessageRenderer) -> None:
    sent = renderer.render(nawal_milestone(), Recipient(KEY, "ben@example.org", "Ben", "en-GB"), NOW)
    message = parse(sent.data)
    assert message["Subject"] == "We passed 100,000 signatures for Nawal!"
    assert "100,012" in text_of(message)


def test_an_unknown_locale_falls_back_to_the_case_default(renderer: MessageRenderer) -> None:
    event = nawal_milestone(title={"fr": "Libérez Nawal", "en": "Free Nawal"}, default_locale="fr")
    message = parse(renderer.render(event, Recipient(KEY, "x@example.org", "Xu", "zh"), NOW).data)
    assert message["Subject"].startswith("Nous avons franchi")  # no zh templates: the case's fr
    assert "Libérez Nawal" in message["Subject"]


def test_the_title_comes_in_the_supporter_locale_else_the_case_default(renderer: MessageRenderer) -> None:
    event = nawal_milestone(title={"fr": "Libérez Nawal"}, default_locale="fr")
    message = parse(renderer.render(event, Recipient(KEY, "b@example.org", "Ben", "en"), NOW).data)
    assert message["Subject"] == "We passed 100,000 signatures for Libérez Nawal!"


def test_victory_headline_and_message_are_localised_and_html_escaped(renderer: MessageRenderer) -> None:
    event = VictoryDeclared(
        case_id="nawal",
        headline={"fr": "Nawal est libre : merci !", "en": "Nawal is free: thank you!"},
        message={"fr": "Elle est <b>rentrée</b>.", "en": "She is home."},
        total=123_456,
        case_title={"fr": "Nawal"},
        default_locale="fr",
    )
    message = parse(renderer.render(event, Recipient(KEY, "a@example.org", "<Amina>", "fr"), NOW).data)
    assert message["Subject"] == "Nawal est libre : merci !"
    html = text_of(message, "html")
    assert "&lt;b&gt;rentrée&lt;/b&gt;" in html and "&lt;Amina&gt;" in html
    assert "Elle est <b>rentrée</b>." in text_of(message)  # text is not HTML: left as written
    assert "123\u202f456" in text_of(message)


def test_headers_carry_rfc_8058_one_click_and_a_stable_message_id(renderer: MessageRenderer) -> None:
    event = nawal_milestone()
    recipient = Recipient(KEY, "amina@example.org", "Amina", "fr")
    first = parse(renderer.render(event, recipient, NOW).data)
    again = parse(renderer.render(event, recipient, NOW).data)
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(first["List-Unsubscribe"])
    assert link.startswith("<https://clameur.example.org/v1/unsubscribe/") and link.endswith(">")
    assert "amina" not in link.lower(), "no email in the token"
    assert (
        first["Message-ID"] == again["Message-ID"] == message_id(event.event_id, KEY, "clameur.example.org")
    )
    assert str(first["Message-ID"]).startswith("<6b0f3c1e-1111-2222-3333-444455556666.")
    assert str(first["From"]) == "Clameur <news@clameur.example.org>"
    assert first["Auto-Submitted"] == "auto-generated"
    other = parse(renderer.render(event, Recipient("b" * 64, "ben@example.org", "Ben", "fr"), NOW).data)
    assert other["Message-ID"] != first["Message-ID"]


HOSTILE_NAMES = [
    "Eve\r\nBcc: spy@evil.example",
    "Eve\nBcc: spy@evil.example",
    "Eve\rBcc: spy@evil.example",
    "=?UTF-8?Q?Eve=0D=0ABcc:_spy@evil.example?=",
    "=?utf-8?b?RXZlDQpCY2M6IHNweUBldmlsLmV4YW1wbGU=?=",
    "Eve\u2028Bcc: spy@evil.example",
    "Eve\x85Bcc: spy@evil.example",
    "=?utf-8?q?=3D=3Futf-8=3Fq=3FEve=3D0D=3D0ABcc:_spy@evil.example=3F=3D?=",  # nested
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_with_crlf_or_an_encoded_newline_adds_no_header(renderer: MessageRenderer, name: str) -> None:
    data = renderer.render(nawal_milestone(), Recipient(KEY, "eve@example.org", name, "fr"), NOW).data
    message = parse_with_single_headers(data)
    assert message["Bcc"] is None
    assert "\n" not in str(message["To"]) and "\r" not in str(message["To"])
    assert message["To"].addresses[0].addr_spec == "eve@example.org"


def test_a_case_title_with_newlines_cannot_add_a_header(renderer: MessageRenderer) -> None:
    event = nawal_milestone(title={"fr": "Nawal\r\nBcc: spy@evil.example =?utf-8?q?=0D=0AX-Evil:_1?="})
    message = parse(renderer.render(event, Recipient(KEY, "a@example.org", "Amina", "fr"), NOW).data)
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert "\n" not in str(message["Subject"])


def test_cleaning_keeps_names_readable() -> None:
    assert clean_display_text("  Zoé   Ünal ") == "Zoé Ünal"
    assert clean_display_text("=?utf-8?q?Zo=C3=A9?=") == "Zoé"
    assert clean_display_text("Nawal\u202e\u2066evil") == "Nawal evil"  # bidi overrides go
    assert clean_display_text("100\u202f000 !") == "100\u202f000 !"  # meant no-break spaces stay
    assert clean_display_text("x" * 500) == "x" * 80


def test_an_address_that_cannot_be_written_safely_is_unsendable(renderer: MessageRenderer) -> None:
    for address in ("no-domain", "a@b.org\r\nBcc: c@d.org", "é@example.org", "a b@example.org"):
        with pytest.raises(UnsendableEmail):
            renderer.render(nawal_milestone(), Recipient(KEY, address, "Amina", "fr"), NOW)


def test_an_international_domain_goes_out_as_punycode(renderer: MessageRenderer) -> None:
    sent = renderer.render(nawal_milestone(), Recipient(KEY, "amina@exemple-é.fr", "Amina", "fr"), NOW)
    assert sent.envelope_to == "amina@xn--exemple--i1a.fr"


def test_a_locale_is_a_folder() -> None:
    templates = Templates()
    assert {"fr", "en"} <= templates.locales
    assert choose_locale("fr-BE", "en", templates.locales) == "fr"
    assert choose_locale("pt", "en", templates.locales) == "en"
    assert choose_locale("pt", "fr", templates.locales) == "fr"


def test_a_template_that_filters_a_supporter_value_is_rendered_per_supporter(tmp_path: Path) -> None:
    # The per-(event, locale) pre-rendered body only holds for plain substitutions; a
    # filter on the name must still be honoured (by rendering that body with Jinja2).
    for locale in ("en", "fr"):
        shutil.copytree(TEMPLATES_DIR / locale, tmp_path / locale)
    for shared in TEMPLATES_DIR.glob("_*"):
        shutil.copy(shared, tmp_path / shared.name)
    (tmp_path / "fr" / "milestone.txt").write_text(
        "Bonjour {{ first_name | upper }} {{ unsubscribe_all_url }}\n"
    )
    custom = MessageRenderer(
        Templates(tmp_path),
        SenderIdentity("news@clameur.example.org", "Clameur", "https://clameur.example.org"),
        TokenSigner("unit-test-secret"),
    )
    message = parse(
        custom.render(nawal_milestone(), Recipient(KEY, "a@example.org", "Amina", "fr"), NOW).data
    )
    assert text_of(message).startswith("Bonjour AMINA https://clameur.example.org/v1/unsubscribe/")
    assert "Amina" in text_of(message, "html")


def test_common_and_unusual_addresses_are_accepted_alike() -> None:
    renderer = MessageRenderer(
        Templates(),
        SenderIdentity("news@clameur.example.org", "Clameur", "https://clameur.example.org"),
        TokenSigner("unit-test-secret"),
    )
    for address in ("o'neil+news@mail.example.org", "A.B@EXAMPLE.ORG", '"quoted"@example.org'):
        try:
            sent = renderer.render(nawal_milestone(), Recipient(KEY, address, "Amina", "fr"), NOW)
        except UnsendableEmail:
            assert address.startswith('"'), address
        else:
            assert sent.envelope_to == address
    for address in ("a..b@example.org", ".a@example.org", "a@example..org"):
        with pytest.raises(UnsendableEmail):
            renderer.render(nawal_milestone(), Recipient(KEY, address, "Amina", "fr"), NOW)


EXPIRY_S = 30 * 86400


@pytest.fixture(scope="module")
def confirmations() -> ConfirmationRenderer:
    return ConfirmationRenderer(Templates(), SENDER, ConfirmationSigner("unit-test-secret"), EXPIRY_S)


def confirmation_links(message: EmailMessage) -> dict[str, str]:
    """The confirm and reject links of the text part, by action."""
    found = re.findall(r"https://clameur\.example\.org/v1/(confirm|reject)/(\S+)", text_of(message))
    return {action: f"https://clameur.example.org/v1/{action}/{token}" for action, token in found}


@pytest.mark.parametrize(
    ("kind", "news_only", "locale", "subject"),
    [
        ("confirmation", False, "fr-BE", "Merci de confirmer votre signature"),
        ("reminder", False, "en", "Reminder: please confirm your signature"),
        ("confirmation", True, "en", "Confirm that you want news of this case"),
    ],
)
def test_a_confirmation_reads_as_its_templates_render_it_in_the_signers_language(
    confirmations: ConfirmationRenderer, kind: ConfirmationKind, news_only: bool, locale: str, subject: str
) -> None:
    # Built from a skeleton per (kind, locale): the bodies must be what Jinja2 renders for
    # this supporter, the name escaped in HTML, the token in the path of both links.
    name = 'Zoé <b>"d\'Arc"</b> & co'
    sent = confirmations.render(
        kind, "nawal", Recipient(KEY, "zoe@example.org", name, locale), NOW, news_only=news_only
    )
    message = parse(sent.data)
    template_locale = locale.split("-")[0]
    assert message["Subject"] == subject
    assert message["Content-Language"] == template_locale
    links = confirmation_links(message)
    assert set(links) == {"confirm", "reject"}
    expires_at = int(NOW.timestamp()) + EXPIRY_S
    actions: tuple[ConfirmationAction, ...] = ("confirm", "reject")
    for action in actions:
        token = links[action].rsplit("/", 1)[1]
        expected = ConfirmationRequest(action, KEY, "nawal", template_locale, expires_at)
        assert confirmations.signer.verify(token, action, NOW) == expected
    context = {
        "locale": template_locale,
        "reminder": kind == "reminder",
        "news_only": news_only,
        "expiry_days": 30,
        "first_name": name,
        "confirm_url": links["confirm"],
        "reject_url": links["reject"],
    }
    for subtype, template in (("plain", "confirmation.txt"), ("html", "confirmation.html")):
        body = confirmations.templates.render(template_locale, template, context)
        assert text_of(message, subtype).replace("\r\n", "\n") == body
    assert "&lt;b&gt;" in text_of(message, "html")
    assert sent.kind == kind and sent.envelope_to == "zoe@example.org"


def test_a_confirmation_has_a_stable_message_id_and_no_list_headers(
    confirmations: ConfirmationRenderer,
) -> None:
    amina = Recipient(KEY, "amina@example.org", "Amina", "fr")
    first = parse(confirmations.render("confirmation", "nawal", amina, NOW).data)
    later = parse(confirmations.render("confirmation", "nawal", amina, NOW.replace(hour=15)).data)
    reminder = parse(confirmations.render("reminder", "nawal", amina, NOW).data)
    other_case = parse(confirmations.render("confirmation", "leila", amina, NOW).data)
    assert first["Message-ID"] == later["Message-ID"]
    assert str(first["Message-ID"]).endswith("@clameur.example.org>")
    assert len({first["Message-ID"], reminder["Message-ID"], other_case["Message-ID"]}) == 3
    assert first["Date"].datetime == NOW
    assert later["Date"].datetime == NOW.replace(hour=15)
    # No list yet: "It wasn't me" is the way out, and news waits for the confirmation.
    assert first["List-Unsubscribe"] is None and first["List-Unsubscribe-Post"] is None
    assert str(first["From"]) == "Clameur <news@clameur.example.org>"
    assert str(first["To"]) == "Amina <amina@example.org>"
    assert first["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_in_a_confirmation_adds_no_header(confirmations: ConfirmationRenderer, name: str) -> None:
    data = confirmations.render(
        "confirmation", "nawal", Recipient(KEY, "eve@example.org", name, "fr"), NOW
    ).data
    message = parse_with_single_headers(data)
    assert message["Bcc"] is None
    assert message["To"].addresses[0].addr_spec == "eve@example.org"
    assert "spy@evil.example" not in str(message["To"].addresses[0].addr_spec)


def test_a_confirmation_to_an_unwritable_address_is_unsendable(confirmations: ConfirmationRenderer) -> None:
    with pytest.raises(UnsendableEmail):
        confirmations.render("confirmation", "nawal", Recipient(KEY, "a@b@\r\nexample.org", "A", "fr"), NOW)
