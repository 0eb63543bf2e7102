"""What operators may do to a case, as plain functions from a state to the next one.

Each change returns the new :class:`CaseState` (``version`` + 1) and the events it
announces; the store writes both in one transaction.  The life of a case:

    open ──victory──▶ won
      └────close────▶ closed

``won`` and ``closed`` are final: a won or closed case is not edited, won again or
closed (409).  A case never goes back to ``open``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from clameur.events import (
    CASE_ID_PATTERN,
    Action,
    CaseClosed,
    CaseState,
    CaseStatus,
    Confirmation,
    Event,
    VictoryDeclared,
)
from clameur.events import Victory as VictoryRecord

Locale = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class CaseConflict(Exception):
    """The change is not allowed in the case's current state (HTTP 409)."""


class InvalidCase(ValueError):
    """The change would leave the case inconsistent (HTTP 422); ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseCreate(_Request):
    """``POST /v1/admin/cases``: a new open case."""

    id: Annotated[str, StringConstraints(pattern=CASE_ID_PATTERN)]
    title: dict[Locale, Title] = Field(min_length=1)
    goal: int = Field(gt=0, le=2_000_000_000)
    milestones: list[Annotated[int, Field(gt=0, le=2_000_000_000)]] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=lambda: [Action.SIGNATURE], min_length=1)
    default_locale: Locale
    locales: list[Locale] | None = Field(
        default=None, description="locales the widgets may use; default: those of the title"
    )
    target: Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)] | None = None
    confirmation: Confirmation = Field(
        default="email", description="email: a signature counts once its address is confirmed; none: at once"
    )
    small_count_threshold: int = Field(
        default=5, ge=1, le=1_000_000, description="public per-country counts below this are shown as other"
    )
    retention_days: int = Field(
        default=180,
        ge=1,
        le=36_500,
        description="days after the end when supporters' data is erased",
    )


class CasePatch(_Request):
    """``PATCH /v1/admin/cases/{id}``: the fields given replace the current ones."""

    title: dict[Locale, Title] | None = Field(default=None, min_length=1)
    goal: int | None = Field(default=None, gt=0, le=2_000_000_000)
    milestones: list[Annotated[int, Field(gt=0, le=2_000_000_000)]] | None = None
    actions: list[Action] | None = Field(default=None, min_length=1)
    default_locale: Locale | None = None
    locales: list[Locale] | None = Field(default=None, min_length=1)
    target: Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)] | None = None
    confirmation: Confirmation | None = None
    small_count_threshold: int | None = Field(default=None, ge=1, le=1_000_000)
    retention_days: int | None = Field(default=None, ge=1, le=36_500)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


class VictoryRequest(_Request):
    """``POST /v1/admin/cases/{id}/victory``: the good news, per locale."""

    headline: dict[Locale, Text] = Field(min_length=1)
    message: dict[Locale, Text] = Field(min_length=1)


def _check(state: CaseState) -> CaseState:
    """Raise :class:`InvalidCase` unless ``state`` is consistent."""
    if state.default_locale not in state.locales:
        raise InvalidCase("default_locale", "default_locale must be one of the case's locales")
    if state.default_locale not in state.title:
        raise InvalidCase("title", f"title needs a text in the default locale {state.default_locale!r}")
    unknown = sorted(set(state.title) - set(state.locales))
    if unknown:
        raise InvalidCase("title", f"title has locales the case does not use: {', '.join(unknown)}")
    return state


def new_case(request: CaseCreate, now: datetime) -> CaseState:
    """The first state (version 1) of a case, or :class:`InvalidCase`."""
    locales = request.locales if request.locales is not None else sorted(request.title)
    return _check(
        CaseState(
            case_id=request.id,
            version=1,
            title=dict(request.title),
            status=CaseStatus.OPEN,
            goal=request.goal,
            milestones=tuple(sorted(set(request.milestones))),
            actions=tuple(dict.fromkeys(request.actions)),
            locales=tuple(dict.fromkeys(locales)),
            default_locale=request.default_locale,
            target=request.target,
            confirmation=request.confirmation,
            small_count_threshold=request.small_count_threshold,
            retention_days=request.retention_days,
            occurred_at=now,
            updated_at=now,
        )
    )


def _next(state: CaseState, now: datetime, **changes: Any) -> CaseState:
    # A new event_id per version: consumers of cases.v1 see each version as its own event.
    fields = state.model_dump(exclude={"event_id", "occurred_at", "updated_at", "version"})
    fields.update(changes)
    return CaseState(**fields, version=state.version + 1, occurred_at=now, updated_at=now)


def _require_open(state: CaseState, what: str) -> None:
    if state.status is not CaseStatus.OPEN:
        raise CaseConflict(f"Case {state.case_id} is {state.status.value}: it cannot be {what} any more.")


def patched(state: CaseState, patch: CasePatch, now: datetime) -> tuple[CaseState, list[Event]]:
    """The case with the patch's fields replaced; only an open case is edited."""
    _require_open(state, "edited")
    changes: dict[str, Any] = {}
    given = patch.model_fields_set
    if "title" in given and patch.title is not None:
        changes["title"] = dict(patch.title)
    if "goal" in given and patch.goal is not None:
        changes["goal"] = patch.goal
    if "milestones" in given and patch.milestones is not None:
        changes["milestones"] = tuple(sorted(set(patch.milestones)))
    if "actions" in given and patch.actions is not None:
        changes["actions"] = tuple(dict.fromkeys(patch.actions))
    if "default_locale" in given and patch.default_locale is not None:
        changes["default_locale"] = patch.default_locale
    if "locales" in given and patch.locales is not None:
        changes["locales"] = tuple(dict.fromkeys(patch.locales))
    if "target" in given:
        changes["target"] = patch.target
    for name in ("confirmation", "small_count_threshold", "retention_days"):
        if name in given and getattr(patch, name) is not None:
            changes[name] = getattr(patch, name)
    return _check(_next(state, now, **changes)), []


def declared_victory(
    state: CaseState, request: VictoryRequest, total: int, now: datetime
) -> tuple[CaseState, list[Event]]:
    """The case won: status ``won`` with the victory, and a ``VictoryDeclared`` to announce."""
    _require_open(state, "won")
    for name, text in (("headline", request.headline), ("message", request.message)):
        if state.default_locale not in text:
            raise InvalidCase(name, f"{name} needs a text in the default locale {state.default_locale!r}")
    victory = VictoryRecord(headline=dict(request.headline), message=dict(request.message), declared_at=now)
    won = _next(state, now, status=CaseStatus.WON, victory=victory)
    announcement = VictoryDeclared(
        case_id=state.case_id,
        headline=victory.headline,
        message=victory.message,
        total=total,
        case_title=state.title,
        default_locale=state.default_locale,
        occurred_at=now,
    )
    return won, [announcement]


def closed(state: CaseState, now: datetime) -> tuple[CaseState, list[Event]]:
    """The case stops taking actions without a victory: status ``closed`` and a ``CaseClosed``."""
    _require_open(state, "closed")
    return _next(state, now, status=CaseStatus.CLOSED), [CaseClosed(case_id=state.case_id, occurred_at=now)]


def case_fields(state: CaseState) -> dict[str, Any]:
    """What both the admin and the public documents of a case say of it, after its id."""
    return {
        "title": state.title,
        "status": state.status.value,
        "goal": state.goal,
        "milestones": list(state.milestones),
        "actions": [action.value for action in state.actions],
        "locales": list(state.locales),
        "default_locale": state.default_locale,
        "target": state.target,
        "confirmation": state.confirmation,
    }


def case_document(state: CaseState, created_at: datetime | None = None) -> dict[str, Any]:
    """The admin API's view of a case (what was stored, with its version)."""
    document: dict[str, Any] = {
        "id": state.case_id,
        "version": state.version,
        **case_fields(state),
        "victory": state.victory.model_dump(mode="json") if state.victory is not None else None,
        "small_count_threshold": state.small_count_threshold,
        "retention_days": state.retention_days,
        "updated_at": state.updated_at.isoformat(),
    }
    if created_at is not None:
        document["created_at"] = created_at.isoformat()
    return document
