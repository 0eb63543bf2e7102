"""Intake's signing routes: a widget's signature, its CORS preflight, a partner's bulk import.

Each is a :class:`~intake.direct_route.DirectRoute`: one definition that serves the hot
path without FastAPI's request solving and that the OpenAPI document describes (its
prose and examples are in :mod:`intake.openapi`).  The answers are the desk's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from clameur.admission import Lane, Rule
from intake import openapi
from intake.direct_route import DirectRoute
from intake.idempotency import StoredAnswer
from intake.resources import Running
from intake.settings import IntakeSettings

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


def admission_rules(settings: IntakeSettings) -> list[Rule]:
    """The bounded lanes: widget signatures, and partners' bulk imports apart (a bulk request
    holds a thousand signatures' work; it must not take the widget's places).  Preflights,
    the widget script, health and metrics are never refused."""
    signatures = Lane(
        "signatures",
        settings.intake_max_in_flight,
        "The campaign is busy: many people are signing at once. Your signature was not "
        "recorded yet; please retry in a few seconds (Retry-After).",
        cors=True,
    )
    bulk = Lane(
        "bulk",
        settings.intake_bulk_max_in_flight,
        "The campaign is busy: too many bulk imports at once. Nothing of this batch was "
        "recorded; retry it after Retry-After seconds.",
    )
    return [
        Rule(signatures, frozenset({"POST"}), "/v1/cases/", "/signatures"),
        Rule(bulk, frozenset({"POST"}), "/v1/cases/", "/signatures/batch"),
    ]


def _respond(answer: StoredAnswer, extra_headers: dict[str, str]) -> Response:
    headers = {**answer.headers, **extra_headers} if extra_headers else answer.headers
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=headers)
