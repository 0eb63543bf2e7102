"""Intake's signing routes: a widget's signature, its CORS preflight, a partner's bulk import.

Each is a :class:`~intake.direct_route.DirectRoute`: one definition that serves the hot
path without FastAPI's request solving and that the OpenAPI document describes (its
prose and examples are in :mod:`intake.openapi`).  The answers are the desk's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from intake import openapi
from intake.direct_route import DirectRoute
from intake.idempotency import StoredAnswer
from intake.resources import Running

SIGNATURES_ROUTE = "/v1/cases/{case_id}/signatures"
BATCH_ROUTE = "/v1/cases/{case_id}/signatures/batch"


def signature_routes(running: Running) -> list[BaseRoute]:
    """The routes, answering with the desk of the running app."""

    async def sign(request: Request) -> Response:
        answer, cors = await running.current.desk.sign(request.path_params["case_id"], request)
        return _respond(answer, cors)

    async def sign_preflight(request: Request) -> Response:
        status, headers, answer = running.current.desk.preflight(request)
        if answer is not None:
            return _respond(answer, headers)
        return Response(status_code=status, headers=headers)

    async def sign_batch(request: Request) -> Response:
        answer = await running.current.desk.sign_batch(request.path_params["case_id"], request)
        return _respond(answer, {})

    return [
        DirectRoute(SIGNATURES_ROUTE, sign, methods=["POST"], **openapi.SIGN),
        DirectRoute(SIGNATURES_ROUTE, sign_preflight, methods=["OPTIONS"], include_in_schema=False),
        DirectRoute(BATCH_ROUTE, sign_batch, methods=["POST"], **openapi.SIGN_BATCH),
    ]


def _respond(answer: StoredAnswer, extra_headers: dict[str, str]) -> Response:
    headers = {**answer.headers, **extra_headers} if extra_headers else answer.headers
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=headers)
