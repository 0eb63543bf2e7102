"""What intake's OpenAPI document says: the routes' prose, the answers' shapes, the examples.

The signing routes read their bodies themselves (see :mod:`intake.direct_route`), so
FastAPI learns nothing about the body or the path from their handlers: the case id
parameter and the request bodies are declared here, and :func:`document` adds the
bodies' models to the schema's components.  The answers are built by the signing desk;
the models below only describe them.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from clameur.events import CASE_ID_PATTERN
from intake.validation import SignatureFields, SignatureForm

TITLE = "Clameur intake"
VERSION = "1"
SUMMARY = "Accepts petition signatures from widgets and partners, durably."


class SignatureReceipt(BaseModel):
    """``status``: ``pending_confirmation`` on a case that counts a signature once its
    address is confirmed (the supporter gets an email with the link), else ``accepted``."""

    signature_id: UUID
    status: Literal["accepted", "pending_confirmation"]


class BatchItemResult(BaseModel):
    """``status``: ``rejected`` (see ``errors``), or as for one signature: ``accepted`` or
    ``pending_confirmation``."""

    index: int
    status: Literal["accepted", "pending_confirmation", "rejected"]
    signature_id: UUID | None = None
    errors: list[dict[str, str]] | None = None


class BatchReceipt(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItemResult]


class ProblemDetails(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None
    case_status: str | None = None
    headline: dict[str, str] | None = None


class _BatchDoc(BaseModel):
    """The bulk body as documented: ``signatures`` holds up to 1,000 signatures."""

    signatures: list[SignatureFields]


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "model": ProblemDetails,
        "content": {"application/problem+json": {}},
    }


_CASE_ID = {
    "name": "case_id",
    "in": "path",
    "required": True,
    "description": "The case's slug.",
    "schema": {
        "type": "string",
        "title": "Case Id",
        "description": "The case's slug.",
        "examples": ["nawal-benaissa"],
        "pattern": CASE_ID_PATTERN,
    },
}


def _operation(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """The path parameter and the JSON body (by reference to ``model``) of a signing route."""
    return {
        "parameters": [_CASE_ID],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                    "examples": examples,
                }
            },
        },
    }


_CAMILLE = {
    "first_name": "Camille",
    "last_name": "Durand",
    "email": "camille.durand@example.org",
    "country": "FR",
}

SIGN: dict[str, Any] = {
    "status_code": 202,
    "summary": "Sign: one supporter's action for one case",
    "description": (
        "Answers 202 only once the signature is durable (acknowledged by the broker). "
        "Headers: `Idempotency-Key` (optional, a retry returns the first answer), "
        "`X-Clameur-Widget` or query `widget_key` (the widget's public key; needed from "
        "a web page). `website` is a honeypot: leave it out. On a case that confirms "
        "addresses (`confirmation: email`) the status is `pending_confirmation`: the "
        "signature counts once the supporter opens the link emailed to them."
    ),
    "response_model": SignatureReceipt,
    "responses": {
        202: {
            "description": "Accepted and durable: the broker acknowledged it.",
            "model": SignatureReceipt,
            "content": {
                "application/json": {
                    "examples": {
                        "confirmation case": {
                            "value": {
                                "signature_id": "0b6f2c1e-4a9d-4f1e-9a57-3c2d1e0f9b8a",
                                "status": "pending_confirmation",
                            }
                        },
                        "case without confirmation": {
                            "value": {
                                "signature_id": "5d1a7e3c-2b8f-4c6d-8e9a-1f0b2c3d4e5f",
                                "status": "accepted",
                            }
                        },
                    }
                }
            },
        },
        403: _problem("Widget key unknown or not allowed from this origin, or the human check failed."),
        404: _problem("No such case."),
        410: _problem(
            "The case is won or closed; `case_status` says which and `headline` (per locale) "
            "carries the victory headline, e.g. Nawal Benaissa is free."
        ),
        413: _problem("Body over 8 KiB."),
        415: _problem("Body is not JSON."),
        422: _problem("Invalid fields; `errors` lists `{field, message}`."),
        429: _problem("Rate limited; see Retry-After."),
        503: _problem("The broker did not acknowledge in time; nothing was promised; see Retry-After."),
    },
    "openapi_extra": _operation(
        SignatureForm,
        {
            "signature": {
                "summary": "A supporter signs for Nawal Benaissa and wants news",
                "value": {
                    **_CAMILLE,
                    "postal_code": "75011",
                    "locale": "fr",
                    "action": "signature",
                    "consent": {"updates": True},
                    "source": {
                        "widget": "free-nawal-home",
                        "page_url": "https://free-nawal.example/",
                        "referrer": None,
                    },
                },
            },
            "minimal": {"summary": "Only the required fields", "value": _CAMILLE},
        },
    ),
}

SIGN_BATCH: dict[str, Any] = {
    "status_code": 202,
    "summary": "Bulk import: a partner's paper or offline signatures",
    "description": (
        "`Authorization: Bearer <partner key>`. Up to 1,000 signatures, each judged alone: "
        "the answer has a result per item (`index`, `status`, `signature_id` or `errors`). "
        "202 only once every accepted item is acknowledged by the broker; 503 if it is not."
    ),
    "response_model": BatchReceipt,
    "responses": {
        401: _problem("Missing or unknown partner key."),
        404: _problem("No such case."),
        410: _problem("The case is won or closed."),
        413: _problem("Body too large."),
        415: _problem("Body is not JSON."),
        422: _problem("The body is not a list of signatures."),
        503: _problem("The broker did not acknowledge in time; see Retry-After."),
    },
    "openapi_extra": _operation(
        _BatchDoc,
        {
            "paper": {
                "summary": "Two paper signatures for Nawal Benaissa",
                "value": {
                    "signatures": [
                        _CAMILLE,
                        {
                            "first_name": "Youssef",
                            "last_name": "Amrani",
                            "email": "y.amrani@example.org",
                            "country": "MA",
                            "locale": "fr",
                        },
                    ]
                },
            }
        },
    ),
}


def document(app: FastAPI) -> None:
    """Make ``app.openapi()`` FastAPI's document plus the models of the declared bodies."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (SignatureForm, _BatchDoc):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
