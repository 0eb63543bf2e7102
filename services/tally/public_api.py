"""The public reads: the cases, their counts, and a live stream of the count.

Cacheable (weak ETag, ``Cache-Control: public, max-age=…``), open to any origin (the
app's CORS middleware); ``/live`` is Server-Sent Events that push a case's counts when
they move, at most every ``live_interval_s``, and end when the server shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from clameur.admission import Lane, Rule
from clameur.events import is_case_id
from clameur.web import Problem
from tally.views import CaseReader, CaseView, etag_matches, etag_of


class _JSON(Response):
    media_type = "application/json"


def _not_found(case_id: str) -> Problem:
    return Problem(404, f"There is no case {case_id!r}; check the case id in the widget's settings.")


def public_router(reader: Callable[[], CaseReader], *, max_age_s: int, live_interval_s: float) -> APIRouter:
    """The public reads; ``reader()`` gives the running app's reader at each request."""
    router = APIRouter()
    cache_control = f"public, max-age={max_age_s}"

    def cached(request: Request, etag: str, body: Any) -> Response:
        headers = {"ETag": etag, "Cache-Control": cache_control}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return _JSON(orjson.dumps(body), headers=headers)

    @router.get("/v1/cases")
    async def list_cases(request: Request) -> Response:
        views = await reader().cases()
        etag = etag_of([view.etag_part for view in views] + [(len(views),)])
        return cached(request, etag, {"cases": [view.document for view in views]})

    @router.get("/v1/cases/{case_id}")
    async def read_case(case_id: str, request: Request) -> Response:
        view = await _find(reader(), case_id)
        return cached(request, view.etag, view.document)

    @router.get("/v1/cases/{case_id}/live")
    async def live(case_id: str) -> EventSourceResponse:
        case_reader = reader()  # the stream's, until it ends
        first = await _find(case_reader, case_id)
        return EventSourceResponse(
            _counts(case_reader, case_id, first, live_interval_s),
            ping=15,
            headers={"Cache-Control": "no-store"},
        )

    return router


def admission_rules(*, max_in_flight: int, max_streams: int) -> list[Rule]:
    """Two lanes: the short reads bounded by requests in flight, the live streams (each held
    for minutes) by a cap on open streams.  The admin API is never refused."""
    live = Lane(
        "live",
        max_streams,
        "Too many people are following this campaign live right now; the widget will "
        "reconnect after Retry-After seconds (the count is also at /v1/cases/{case_id}).",
        cors=True,
    )
    reads = Lane(
        "reads",
        max_in_flight,
        "Too many people are reading the campaign's counts at once; please retry in a few "
        "seconds (Retry-After).",
        cors=True,
    )
    return [
        Rule(live, frozenset({"GET"}), "/v1/cases/", "/live"),
        Rule(reads, frozenset({"GET", "HEAD"}), "/v1/cases", not_suffixes=("/live",)),
    ]


async def _find(reader: CaseReader, case_id: str) -> CaseView:
    if not is_case_id(case_id):
        raise _not_found(case_id)
    view = await reader.case(case_id)
    if view is None:
        raise _not_found(case_id)
    return view


def live_document(view: CaseView) -> dict[str, Any]:
    """What a live event carries: the moving parts of the case (small country counts folded)."""
    document = view.document
    return {
        "id": document["id"],
        "status": document["status"],
        "confirmation": document["confirmation"],
        "total": document["total"],
        "pending": document["pending"],
        "by_country": document["by_country"],
        "by_action": document["by_action"],
        "updated_at": document["updated_at"],
    }


async def _counts(
    reader: CaseReader, case_id: str, first: CaseView, interval_s: float
) -> AsyncIterator[ServerSentEvent]:
    """The case's counts now, then each time they change (sampled every ``interval_s``).

    sse-starlette cancels this generator when the client leaves or the server stops.
    """
    view: CaseView | None = first
    last_etag = ""
    while view is not None:
        if view.etag != last_etag:
            last_etag = view.etag
            yield ServerSentEvent(
                data=orjson.dumps(live_document(view)).decode(), event="count", id=str(view.total)
            )
        await asyncio.sleep(interval_s)
        view = await reader.case(case_id)
