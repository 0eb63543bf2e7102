"""The operators' API: create, edit, declare victory, close.  Bearer token, constant-time.

401 with ``WWW-Authenticate`` without the right bearer token (missing or wrong: the
same answer, :class:`clameur.admin.AdminDoor`, which also logs and counts each action
done and answers 429 after a burst of wrong tokens), 404 unknown case, 409 duplicate id
or a change the case's status forbids, 422 invalid fields: all problem+json.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from clameur.admin import AdminDoor
from clameur.events import CaseState, is_case_id
from clameur.web import Problem
from tally import cases
from tally.case_store import CaseStore, Change, DuplicateCase, UnknownCase
from tally.cases import CaseConflict, CaseCreate, CasePatch, InvalidCase, VictoryRequest
from tally.views import CaseReader, CaseView

CASE_ACTIONS = ("case_created", "case_changed", "victory_declared", "case_closed")
"""The audit's names of what these routes do (``clameur_admin_actions_total``'s ``action``)."""


def admin_router(
    store: Callable[[], CaseStore], door: AdminDoor, reader: Callable[[], CaseReader] | None = None
) -> APIRouter:
    """The operators' routes; ``store()`` and ``reader()`` give the running app's at each request."""
    router = APIRouter(prefix="/v1/admin/cases", dependencies=[Depends(door.guard())])

    async def change(case_id: str, action: str, change: Change) -> JSONResponse:
        state = await _changed(store(), case_id, change)
        door.record(action, case_id)
        return JSONResponse(cases.case_document(state))

    @router.post("", status_code=201)
    async def create(request: CaseCreate) -> JSONResponse:
        try:
            state = cases.new_case(request, datetime.now(UTC))
            await store().create(state)
        except InvalidCase as invalid:
            raise _invalid(invalid) from None
        except DuplicateCase:
            raise Problem(
                409, f"A case with the id {request.id!r} exists already; pick another id."
            ) from None
        door.record("case_created", state.case_id)
        return JSONResponse(
            cases.case_document(state), status_code=201, headers={"Location": f"/v1/cases/{state.case_id}"}
        )

    @router.get("/{case_id}")
    async def read(case_id: str) -> JSONResponse:
        view = await reader().case(case_id) if reader is not None and is_case_id(case_id) else None
        if view is None:
            raise Problem(404, f"There is no case {case_id!r}.")
        return JSONResponse(admin_document(view))

    @router.patch("/{case_id}")
    async def edit(case_id: str, patch: CasePatch) -> JSONResponse:
        return await change(
            case_id, "case_changed", lambda state, _total, now: cases.patched(state, patch, now)
        )

    @router.post("/{case_id}/victory")
    async def victory(case_id: str, request: VictoryRequest) -> JSONResponse:
        return await change(
            case_id,
            "victory_declared",
            lambda state, total, now: cases.declared_victory(state, request, total, now),
        )

    @router.post("/{case_id}/close")
    async def close(case_id: str) -> JSONResponse:
        return await change(case_id, "case_closed", lambda state, _total, now: cases.closed(state, now))

    return router


async def _changed(store: CaseStore, case_id: str, change: Change) -> CaseState:
    """The case after ``change``; its refusals as problems (404, 409, 422)."""
    if not is_case_id(case_id):
        raise Problem(404, f"There is no case {case_id!r}.")
    try:
        return await store.change(case_id, change)
    except UnknownCase:
        raise Problem(404, f"There is no case {case_id!r}.") from None
    except CaseConflict as conflict:
        raise Problem(409, str(conflict)) from None
    except InvalidCase as invalid:
        raise _invalid(invalid) from None


def admin_document(view: CaseView) -> dict[str, Any]:
    """The admin view of a case with its exact counts: every country, however small."""
    counts = view.counts
    return {
        **cases.case_document(view.state),
        "total": counts.total,
        "pending": counts.pending,
        "by_country": counts.by_country,
        "by_action": counts.by_action,
    }


def _invalid(invalid: InvalidCase) -> Problem:
    return Problem(
        422,
        f"Some fields are missing or invalid: {invalid.field}.",
        errors=[{"field": invalid.field, "message": invalid.message}],
    )
