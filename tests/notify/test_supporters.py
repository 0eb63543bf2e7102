"""Folding signatures.v2 into notify's subscriptions, and the supporter key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notify.supporters import fold_signatures, supporter_key

from clameur.events import Consent, SignatureAccepted, SignatureConfirmed, SignaturesRejected

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def signed(
    case_id: str, key: str, at: datetime, *, consent: bool = True, awaits: bool = False
) -> SignatureAccepted:
    return SignatureAccepted(
        case_id=case_id,
        country="FR",
        locale="fr",
        supporter_key=key,
        email_domain="example.org",
        consent=Consent(updates=consent),
        awaits_confirmation=awaits,
        received_at=at,
    )


def test_the_key_is_the_keyed_hash_of_the_canonical_email() -> None:
    key = supporter_key("secret", " Amina@Example.org")
    assert key == supporter_key("secret", "amina@example.org")
    assert len(key) == 64 and key != supporter_key("other-secret", "amina@example.org")


def test_only_signatures_asking_for_news_or_awaiting_confirmation_are_kept() -> None:
    changes = fold_signatures(
        [
            signed("nawal", "a", T0),
            signed("nawal", "b", T0, consent=False),
            signed("nawal", "c", T0, consent=False, awaits=True),
        ],
        {},
    )
    assert {(s.supporter_key, s.wants_updates, s.awaits_confirmation) for s in changes.subscriptions} == {
        ("a", True, False),
        ("c", False, True),
    }


def test_the_first_signature_of_a_case_is_kept_and_wishes_add_up() -> None:
    changes = fold_signatures(
        [
            signed("nawal", "a", T0 + timedelta(minutes=5), consent=False, awaits=True),
            signed("nawal", "a", T0),
            signed("karim", "a", T0 + timedelta(minutes=1)),
        ],
        {},
    )
    by_case = {s.case_id: s for s in changes.subscriptions}
    assert by_case["nawal"].signed_at == T0
    assert by_case["nawal"].wants_updates and by_case["nawal"].awaits_confirmation
    assert changes.recorded == 3


def test_a_rejection_drops_only_what_is_not_confirmed_before_it() -> None:
    rejected = fold_signatures(
        [signed("nawal", "a", T0), SignaturesRejected(case_id="nawal", supporter_key="a")], {}
    )
    assert rejected.subscriptions == [] and rejected.rejected == [("nawal", "a")]
    confirmed = fold_signatures(
        [
            signed("nawal", "a", T0),
            SignatureConfirmed(case_id="nawal", supporter_key="a"),
            SignaturesRejected(case_id="nawal", supporter_key="a"),
        ],
        {},
    )
    assert confirmed.rejected == [] and len(confirmed.subscriptions) == 1
    assert ("nawal", "a") in confirmed.confirmed


def test_an_erased_supporter_comes_back_only_with_a_newer_signature() -> None:
    erased = {"a": T0}
    replay = fold_signatures([signed("nawal", "a", T0 - timedelta(days=1))], erased)
    assert replay.subscriptions == []
    fresh = fold_signatures([signed("nawal", "a", T0 + timedelta(days=1))], erased)
    assert [s.supporter_key for s in fresh.subscriptions] == ["a"]
