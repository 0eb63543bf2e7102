"""Folding signatures into notify's supporter list, and the supporter key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notify.supporters import fold_signatures, supporter_key

from clameur.events import Consent, SignatureAccepted
from clameur.supporters import normalise_email

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def signed(
    case_id: str, key: str, at: datetime, *, consent: bool = True, locale: str = "fr"
) -> SignatureAccepted:
    return SignatureAccepted(
        case_id=case_id,
        first_name="Amina",
        last_name="Test",
        country="FR",
        locale=locale,
        supporter_key=key,
        email=f"{key}@example.org" if consent else None,
        consent=Consent(updates=consent),
        received_at=at,
    )


def test_the_key_is_an_hmac_of_the_trimmed_lowercased_email() -> None:
    assert normalise_email("  Amina@Example.ORG ") == "amina@example.org"
    key = supporter_key("secret", " Amina@Example.org")
    assert key == supporter_key("secret", "amina@example.org")
    assert len(key) == 64 and key != supporter_key("other-secret", "amina@example.org")


def test_only_consenting_signatures_count() -> None:
    changes = fold_signatures([signed("nawal", "a", T0), signed("nawal", "b", T0, consent=False)], {})
    assert [s.supporter_key for s in changes.supporters] == ["a"]
    assert [(s.case_id, s.supporter_key) for s in changes.subscriptions] == [("nawal", "a")]


def test_newest_details_win_and_the_first_signature_of_a_case_is_kept() -> None:
    changes = fold_signatures(
        [
            signed("nawal", "a", T0 + timedelta(minutes=5), locale="en"),
            signed("nawal", "a", T0, locale="fr"),
            signed("karim", "a", T0 + timedelta(minutes=1)),
        ],
        {},
    )
    [supporter] = changes.supporters
    assert supporter.locale == "en"
    assert {(s.case_id, s.signed_at) for s in changes.subscriptions} == {
        ("nawal", T0),
        ("karim", T0 + timedelta(minutes=1)),
    }
    assert changes.recorded == 3


def test_an_erased_supporter_comes_back_only_with_a_newer_signature() -> None:
    erased = {"a": T0}
    replay = fold_signatures([signed("nawal", "a", T0 - timedelta(days=1))], erased)
    assert replay.supporters == [] and replay.subscriptions == []
    fresh = fold_signatures([signed("nawal", "a", T0 + timedelta(days=1))], erased)
    assert [s.supporter_key for s in fresh.supporters] == ["a"]
