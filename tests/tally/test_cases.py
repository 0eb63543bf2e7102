"""The life of a case, as pure transitions: create, edit, victory, close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from tally.cases import (
    CaseConflict,
    CaseCreate,
    CasePatch,
    InvalidCase,
    VictoryRequest,
    case_document,
    closed,
    declared_victory,
    new_case,
    patched,
)

from clameur.events import CaseClosed, CaseStatus, VictoryDeclared
from tests.tally.helpers import case_body

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def _case() -> CaseCreate:
    return CaseCreate.model_validate(case_body("nawal", milestones=[50_000, 10_000, 10_000]))


def test_a_new_case_is_open_at_version_one_with_sorted_distinct_milestones() -> None:
    state = new_case(_case(), NOW)
    assert (state.version, state.status, state.milestones) == (1, CaseStatus.OPEN, (10_000, 50_000))
    assert state.locales == ("fr", "en")


def test_locales_default_to_those_of_the_title() -> None:
    body = case_body("nawal")
    del body["locales"]
    assert new_case(CaseCreate.model_validate(body), NOW).locales == ("en", "fr")


def test_the_default_locale_needs_a_title() -> None:
    with pytest.raises(InvalidCase) as raised:
        new_case(CaseCreate.model_validate(case_body("nawal", title={"en": "x"}, locales=["fr", "en"])), NOW)
    assert raised.value.field == "title"


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "Not A Slug"},
        {"goal": 0},
        {"milestones": [-1]},
        {"actions": ["petition"]},
        {"title": {}},
        {"extra": 1},
    ],
)
def test_invalid_requests_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CaseCreate.model_validate(case_body("nawal", **overrides))


def test_a_patch_replaces_the_fields_given_and_bumps_the_version() -> None:
    state = new_case(_case(), NOW)
    changed, events = patched(state, CasePatch(goal=600_000, target=None), LATER)
    assert (changed.version, changed.goal, changed.target, changed.title) == (2, 600_000, None, state.title)
    assert changed.updated_at == LATER and changed.event_id != state.event_id
    assert events == []


def test_an_empty_patch_is_refused() -> None:
    with pytest.raises(ValidationError):
        CasePatch.model_validate({})


def test_victory_makes_the_case_won_and_announces_it() -> None:
    state = new_case(_case(), NOW)
    request = VictoryRequest(headline={"fr": "Nawal est libre !"}, message={"fr": "Merci à vous."})
    won, events = declared_victory(state, request, 123_456, LATER)
    assert won.status is CaseStatus.WON and won.version == 2
    assert won.victory is not None and won.victory.headline == {"fr": "Nawal est libre !"}
    (announcement,) = events
    assert isinstance(announcement, VictoryDeclared)
    assert (announcement.total, announcement.case_title) == (123_456, state.title)


def test_victory_needs_the_default_locale() -> None:
    state = new_case(_case(), NOW)
    with pytest.raises(InvalidCase):
        declared_victory(state, VictoryRequest(headline={"en": "Free!"}, message={"en": "Thanks"}), 1, LATER)


def test_won_and_closed_are_final() -> None:
    state = new_case(_case(), NOW)
    victory = VictoryRequest(headline={"fr": "Libre"}, message={"fr": "Merci"})
    shut, events = closed(state, LATER)
    assert shut.status is CaseStatus.CLOSED and isinstance(events[0], CaseClosed)
    for final in (shut, declared_victory(state, victory, 0, LATER)[0]):
        with pytest.raises(CaseConflict):
            declared_victory(final, victory, 0, LATER)
        with pytest.raises(CaseConflict):
            closed(final, LATER)
        with pytest.raises(CaseConflict):
            patched(final, CasePatch(goal=1), LATER)


def test_the_admin_document_shows_the_version() -> None:
    document = case_document(new_case(_case(), NOW))
    assert document["id"] == "nawal" and document["version"] == 1 and document["victory"] is None
