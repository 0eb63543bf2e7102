"""Whether a case takes actions, decided from its state in the in-memory registry."""

from __future__ import annotations

from dataclasses import dataclass

from clameur.events import CaseState, CaseStatus


@dataclass(frozen=True)
class CaseRefusal:
    """Why a case refuses actions, as the widget needs it to tell the supporter.

    ``status`` is 404 (no such case) or 410 (won or closed); ``victory_headline`` holds
    the headline per locale when the case was won, so the widget can say "no need to act:
    she is free".
    """

    status: int
    detail: str
    case_status: CaseStatus | None = None
    victory_headline: dict[str, str] | None = None


def refusal(case_id: str, case: CaseState | None) -> CaseRefusal | None:
    """``None`` when ``case`` is open for actions, else why not."""
    if case is None:
        return CaseRefusal(404, f"There is no case {case_id!r}; check the widget's case id.")
    if case.status is CaseStatus.OPEN:
        return None
    if case.status is CaseStatus.WON:
        return CaseRefusal(
            410,
            "This case is won: no need to act any more. Thank you!",
            case_status=case.status,
            victory_headline=dict(case.victory.headline) if case.victory else None,
        )
    return CaseRefusal(410, "This case is closed and no longer takes actions.", case_status=case.status)
