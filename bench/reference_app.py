"""The bare FastAPI reference of the intake issue: same path, same body model, no broker.

``POST /v1/cases/{case_id}/signatures`` validates the body with intake's own request
model (:class:`intake.validation.SignatureForm`: names, email-validator, ISO country,
unknown fields refused) and answers 202 with a signature id, without a broker, a case
registry, rate limits or metrics.  Its rate on this machine is the ceiling intake's is
compared to.

Two styles, chosen by ``BENCH_REFERENCE_STYLE`` (the bench passes it):

- ``model`` (default): the idiomatic FastAPI endpoint, the body declared as a parameter
  of type ``SignatureForm`` (FastAPI parses the JSON, then pydantic validates it);
- ``raw``: the body read as bytes and validated with ``SignatureForm.model_validate_json``,
  exactly the call intake makes (a stricter ceiling: FastAPI's body parsing is skipped).

Served like intake: ``uvicorn --factory bench.reference_app:create_app --workers N``.
"""

from __future__ import annotations

import os
import uuid

import orjson
from fastapi import FastAPI, Request
from intake.validation import SignatureForm
from pydantic import ValidationError
from starlette.responses import Response

ROUTE = "/v1/cases/{case_id}/signatures"


def _accepted() -> Response:
    body = orjson.dumps({"signature_id": str(uuid.uuid4()), "status": "accepted"})
    return Response(body, status_code=202, media_type="application/json")


def create_app() -> FastAPI:
    """The reference app, in the style ``BENCH_REFERENCE_STYLE`` names (``model`` or ``raw``)."""
    style = os.environ.get("BENCH_REFERENCE_STYLE", "model")
    app = FastAPI(title="Bare FastAPI reference (no broker)")

    if style == "raw":

        @app.post(ROUTE, status_code=202)
        async def sign_raw(case_id: str, request: Request) -> Response:
            try:
                SignatureForm.model_validate_json(await request.body())
            except ValidationError as exc:
                errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
                return Response(
                    orjson.dumps({"errors": errors}), status_code=422, media_type="application/json"
                )
            return _accepted()

    elif style == "model":

        @app.post(ROUTE, status_code=202)
        async def sign(case_id: str, form: SignatureForm) -> Response:
            return _accepted()

    else:
        raise ValueError(f"BENCH_REFERENCE_STYLE must be 'model' or 'raw', not {style!r}")
    return app
