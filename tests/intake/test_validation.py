"""The validation core: a body in, an event or field errors out (no services)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from intake.cases import refusal
from intake.validation import (
    InvalidSignature,
    Receipt,
    SignatureFields,
    accept_signature,
    has_control_characters,
    page_without_query,
    parse_fields,
    parse_form,
)

from clameur.events import Action, CaseState, CaseStatus, SignatureAccepted, Victory
from clameur.supporters import SupporterKeys, email_domain, normalise_email
from tests.intake.conftest import case_state

RECEIVED = datetime(2025, 3, 8, 12, 0, tzinfo=UTC)
KEYS = SupporterKeys.from_master("unit-test-secret")


def nawal(**changes: Any) -> CaseState:
    return case_state("nawal-benaissa", **changes)


def body(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "first_name": "Camille",
        "last_name": "Durand",
        "email": "camille.durand@example.org",
        "country": "FR",
    }
    fields.update(changes)
    return orjson.dumps({key: value for key, value in fields.items() if value is not None})


def errors_of(raw: bytes) -> dict[str, str]:
    with pytest.raises(InvalidSignature) as caught:
        parse_form(raw)
    return {error["field"]: error["message"] for error in caught.value.errors}


def signature_event(fields: SignatureFields, receipt: Receipt, keys: SupporterKeys) -> SignatureAccepted:
    return accept_signature(fields, receipt, keys).signature


def test_a_minimal_signature_takes_the_case_defaults() -> None:
    acceptance = accept_signature(parse_form(body()), Receipt(nawal(), RECEIVED), KEYS)
    event = acceptance.signature
    assert event.case_id == "nawal-benaissa"
    assert event.action is Action.SIGNATURE
    assert event.locale == "fr"
    assert event.country == "FR"
    assert event.email_domain == "example.org"
    assert event.consent.updates is False
    assert event.awaits_confirmation is False
    assert event.received_at == RECEIVED
    assert event.supporter_key == KEYS.of_address("camille.durand@example.org")
    assert len(event.supporter_key) == 64
    # A "none" case and no consent: notify will never write, so no contact is made.
    assert acceptance.contact is None
    assert acceptance.status == "accepted"


def test_the_signature_holds_no_personal_data() -> None:
    form = parse_form(
        body(
            first_name="Atena",
            last_name="Daemi-Secret",
            email="Atena.Daemi@Example.ORG",
            postal_code="75011",
            consent={"updates": True},
            source={
                "widget": "w1",
                "page_url": "https://x.example/p",
                "referrer": "https://ref.example/?q=atena",
            },
        )
    )
    raw = signature_event(form, Receipt(nawal(confirmation="email"), RECEIVED), KEYS).to_json().lower()
    for typed in (b"atena", b"daemi", b"75011", b"ref.example", b"referrer", b"last_name", b"postal"):
        assert typed not in raw


def test_the_contact_is_made_when_notify_will_write_and_keeps_the_address_as_typed() -> None:
    typed = parse_form(body(email="  Camille.Durand@Example.ORG ", postal_code="75011"))
    consented = parse_form(body(email="  Camille.Durand@Example.ORG ", consent={"updates": True}))
    for form, case in (
        (typed, nawal(confirmation="email")),
        (consented, nawal()),
        (consented, nawal(confirmation="email")),
    ):
        acceptance = accept_signature(form, Receipt(case, RECEIVED), KEYS)
        contact = acceptance.contact
        assert contact is not None
        assert contact.email == "Camille.Durand@Example.ORG"
        assert (contact.first_name, contact.locale) == ("Camille", "fr")
        assert contact.supporter_key == acceptance.signature.supporter_key
        assert b'Durand"' not in contact.to_json() and b"75011" not in contact.to_json()
        assert set(contact.model_dump()) == {"supporter_key", "email", "first_name", "locale", "recorded_at"}
    assert accept_signature(typed, Receipt(nawal(), RECEIVED), KEYS).contact is None


def test_the_status_follows_the_case_policy() -> None:
    form = parse_form(body())
    pending = accept_signature(form, Receipt(nawal(confirmation="email"), RECEIVED), KEYS)
    assert pending.signature.awaits_confirmation is True
    assert pending.status == "pending_confirmation"
    assert accept_signature(form, Receipt(nawal(confirmation="none"), RECEIVED), KEYS).status == "accepted"


def test_gmail_aliases_are_one_supporter_with_one_domain() -> None:
    events = [
        signature_event(parse_form(body(email=email)), Receipt(nawal(), RECEIVED), KEYS)
        for email in (
            "a.b.c@gmail.com",
            "abc+1@gmail.com",
            "abc@googlemail.com",
            " A.B.C+petition@GMAIL.com ",
        )
    ]
    assert len({event.supporter_key for event in events}) == 1
    assert {event.email_domain for event in events} == {"gmail.com"}
    assert signature_event(
        parse_form(body(email="abd@gmail.com")), Receipt(nawal(), RECEIVED), KEYS
    ).supporter_key not in {events[0].supporter_key}


@pytest.mark.parametrize(
    ("typed", "published"),
    [
        ("https://free-nawal.example/sign", "https://free-nawal.example/sign"),
        (
            "https://free-nawal.example/sign?email=atena%40example.org&utm=x",
            "https://free-nawal.example/sign",
        ),
        ("https://free-nawal.example/sign#name=Atena", "https://free-nawal.example/sign"),
        ("https://free-nawal.example/?", "https://free-nawal.example/"),
        ("https://atena:secret@free-nawal.example/p?x=1", "https://free-nawal.example/p"),
        ("https://medium.example/@nawal", "https://medium.example/@nawal"),
        ("http://[::1/p?email=a", "http://[::1/p"),
        ("/relative/page?x=1#y", "/relative/page"),
    ],
)
def test_the_page_url_loses_its_query_fragment_and_credentials(typed: str, published: str) -> None:
    assert page_without_query(typed) == published
    form = parse_form(body(source={"page_url": typed}))
    assert signature_event(form, Receipt(nawal(), RECEIVED), KEYS).source.page_url == published


def test_case_and_whitespace_variants_of_an_email_are_one_supporter() -> None:
    variants = ["camille.durand@example.org", " Camille.Durand@EXAMPLE.org\t", "CAMILLE.DURAND@example.org"]
    keys = {KEYS.of_address(variant) for variant in variants}
    assert len(keys) == 1
    assert KEYS.of_address("someone.else@example.org") not in keys
    assert SupporterKeys.from_master("another-secret").of_address(variants[0]) not in keys


@pytest.mark.parametrize(
    "name",
    [
        "Camille\nDurand",
        "Camille\r\nBcc: x@example.org",
        "Cam\x00ille",
        "Camille\x7f",
        "Camille%0ABcc",
        "Camille%0d%0aSet-Cookie",
        "Camille&#10;Durand",
        "Camille\u202eellimac",
        "Camille\u2028Durand",
    ],
)
def test_control_characters_and_encoded_newlines_in_names_are_refused(name: str) -> None:
    assert has_control_characters(name)
    found = errors_of(body(first_name=name))
    assert "control characters" in found["first_name"]


@pytest.mark.parametrize("name", ["Nawal", "Benaïssa", "Åsa-Lena", "O'Brien", "100% Camille", "Jean & Marie"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert parse_form(body(first_name=name)).first_name == name


@pytest.mark.parametrize("name", ["http://spam.example", "visit www.spam", "buy-now.com", "HTTPS://X.Y"])
def test_web_addresses_in_names_are_refused(name: str) -> None:
    assert "web address" in errors_of(body(last_name=name))["last_name"]


def test_names_are_trimmed_and_between_1_and_100_characters() -> None:
    assert parse_form(body(first_name="  Camille ")).first_name == "Camille"
    assert "first_name" in errors_of(body(first_name="   "))
    assert "first_name" in errors_of(body(first_name=""))
    assert parse_form(body(last_name="x" * 100)).last_name == "x" * 100
    assert "at most 100" in errors_of(body(last_name="x" * 101))["last_name"]


def test_missing_required_fields_are_each_named() -> None:
    assert set(errors_of(b"{}")) == {"first_name", "last_name", "email", "country"}


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "camille@", "@example.org", "ca mille@example.org"])
def test_invalid_emails_are_refused(email: str) -> None:
    assert "email" in errors_of(body(email=email))


def test_countries_are_real_iso_codes_in_any_case() -> None:
    assert parse_form(body(country="ma")).country == "MA"
    assert "country" in errors_of(body(country="XX"))
    assert "country" in errors_of(body(country="FRA"))


def test_unknown_fields_and_non_json_are_refused() -> None:
    assert errors_of(body(favourite_colour="blue")) == {"favourite_colour": "is not a field of a signature"}
    assert "consent.sms" in errors_of(body(consent={"updates": True, "sms": True}))
    assert errors_of(b"{not json") == {"body": "the body is not valid JSON"}
    assert "body" in errors_of(b"[1, 2]")


def test_locale_and_action_must_be_the_cases() -> None:
    with pytest.raises(InvalidSignature) as caught:
        signature_event(parse_form(body(locale="de", action="tweet")), Receipt(nawal(), RECEIVED), KEYS)
    assert {error["field"] for error in caught.value.errors} == {"locale", "action"}
    event = signature_event(parse_form(body(locale="en", action="letter")), Receipt(nawal(), RECEIVED), KEYS)
    assert (event.locale, event.action) == ("en", Action.LETTER)


def test_the_honeypot_marks_a_bot() -> None:
    assert parse_form(body(website="http://bot.example")).is_bot
    assert not parse_form(body()).is_bot
    assert not parse_form(body(website="")).is_bot


def test_bulk_items_carry_the_partner_and_refuse_widget_only_fields() -> None:
    fields = parse_fields(
        {"first_name": "Youssef", "last_name": "Amrani", "email": "y@example.org", "country": "MA"}
    )
    event = signature_event(fields, Receipt(nawal(), RECEIVED, partner="amnesty-paper"), KEYS)
    assert event.source.partner == "amnesty-paper"
    with pytest.raises(InvalidSignature):
        parse_fields(
            {"first_name": "A", "last_name": "B", "email": "a@example.org", "country": "FR", "website": "x"}
        )
    with pytest.raises(InvalidSignature):
        parse_fields("not an object")


def test_email_domain() -> None:
    assert email_domain(normalise_email("Camille@Example.ORG")) == "example.org"
    assert parse_form(body(email="Camille@Bücher.example")).canonical_email == "camille@xn--bcher-kva.example"


def test_won_and_closed_cases_refuse_with_the_victory_headline() -> None:
    victory = Victory(
        headline={"fr": "Nawal est libre !", "en": "Nawal is free!"}, message={}, declared_at=RECEIVED
    )
    won = refusal("nawal-benaissa", nawal(status=CaseStatus.WON, victory=victory))
    assert won is not None
    assert won.status == 410
    assert won.victory_headline == {"fr": "Nawal est libre !", "en": "Nawal is free!"}
    closed = refusal("nawal-benaissa", nawal(status=CaseStatus.CLOSED))
    assert closed is not None
    assert (closed.status, closed.victory_headline) == (410, None)
    unknown = refusal("nobody", None)
    assert unknown is not None
    assert unknown.status == 404
    assert refusal("nawal-benaissa", nawal()) is None


@pytest.mark.parametrize(
    "address",
    [
        "camille.durand@example.org",
        "Camille.Durand+nawal@Example.ORG",
        "o'brien@example.co.uk",
        "x@xn--bcher-kva.example",
        "user@bücher.example",
        "jörg@example.org",
        '"quoted local"@example.org',
        "a..b@example.org",
        ".a@example.org",
        "a.@example.org",
        "a@localhost",
        "a@example.test",
        "a@example",
        "a@-example.org",
        "a@exa_mple.org",
        "a" * 65 + "@example.org",
        "a@" + "b" * 64 + ".org",
        "a@" + ".".join(["b" * 60] * 4) + ".org",
        "a@[127.0.0.1]",
        "a@b@example.org",
        "@example.org",
        "a@",
        "",
    ],
)
def test_the_fast_email_path_agrees_with_email_validator(address: str) -> None:
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(address, check_deliverability=False)
        # The normal form: NFC local part, the domain in IDNA (A-label) form, lowercased.
        expected: str | None = (
            f"{unicodedata.normalize('NFC', checked.local_part)}@{checked.ascii_domain}".lower()
        )
    except EmailNotValidError:
        expected = None
    for _ in range(2):  # the second time from the domain memo
        try:
            found: str | None = normalise_email(address)
        except ValueError:
            found = None
        assert found == expected
