"""Intake's HTTP application: routes, OpenAPI, and the lifespan that builds and drains it.

``create_app(settings)`` builds an app and nothing else; the producer, the cases.v1
follower and the Turnstile client are made when the app starts (lifespan) and closed when
it stops.  Shutdown order (SIGTERM): uvicorn stops accepting and lets requests in flight
finish, then the lifespan flushes the producer and stops following cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from uuid import UUID

import httpx
from fastapi import FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from clameur.case_registry import CaseRegistry, follow_cases_forever
from clameur.events import CASE_ID_PATTERN, utc_now
from clameur.kafka import create_producer
from clameur.serving import tune_garbage_collection
from clameur.supporters import SupporterKeys
from clameur.web import HttpMetrics, HttpMetricsMiddleware, install_problem_handlers, operations_router
from intake.abuse import ClientAddresses, DomainLimits, RateLimit, TokenBuckets
from intake.human_check import HumanCheck, TurnstileCheck
from intake.idempotency import IdempotencyWindow, StoredAnswer
from intake.metrics import IntakeMetrics
from intake.publisher import KafkaSignaturePublisher, PublishMetrics
from intake.settings import IntakeSettings
from intake.signing import PartnerKeys, SigningDesk
from intake.validation import SignatureFields, SignatureForm
from intake.widget_script import load_widget_script, widget_router
from intake.widgets import WidgetKeys

logger = logging.getLogger(__name__)

SIGNATURES_ROUTE = "/v1/cases/{case_id}/signatures"
BATCH_ROUTE = "/v1/cases/{case_id}/signatures/batch"

CaseId = Annotated[str, Path(description="The case's slug.", examples=["nawal-benaissa"])]


# -- documentation models (answers are built by the desk; these describe them) ----------------


class SignatureReceipt(BaseModel):
    signature_id: UUID
    status: Literal["accepted"]


class BatchItemResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected"]
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


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "model": ProblemDetails,
        "content": {"application/problem+json": {}},
    }


_SIGNATURE_EXAMPLE = {
    "first_name": "Camille",
    "last_name": "Durand",
    "email": "camille.durand@example.org",
    "country": "FR",
    "postal_code": "75011",
    "locale": "fr",
    "action": "signature",
    "consent": {"updates": True},
    "source": {"widget": "free-nawal-home", "page_url": "https://free-nawal.example/", "referrer": None},
}

_SIGNATURE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted and durable: the broker acknowledged it.", "model": SignatureReceipt},
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
}


def _request_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                    "examples": examples,
                }
            },
        }
    }


def create_app(settings: IntakeSettings) -> FastAPI:
    """Intake, configured by ``settings``; resources are made when the app starts."""
    registry = CollectorRegistry()
    cases = CaseRegistry()
    http_metrics = HttpMetrics(registry, "intake")
    metrics = IntakeMetrics(registry, lambda: float(len(cases)))
    publish_metrics = PublishMetrics(registry)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        publisher = KafkaSignaturePublisher(
            topic=settings.topics.signatures,
            producer_factory=lambda: create_producer(
                settings.kafka,
                linger_ms=settings.producer_linger_ms,
                request_timeout_ms=settings.producer_request_timeout_ms,
                client_id="intake",
            ),
            metrics=publish_metrics,
            ack_timeout=settings.broker_ack_timeout,
            probe_interval=settings.broker_probe_interval,
            reset_after=settings.producer_reset_after,
        )
        async with contextlib.AsyncExitStack() as stack:
            human_check: HumanCheck | None = None
            if settings.turnstile_secret is not None:
                client = await stack.enter_async_context(httpx.AsyncClient())
                human_check = TurnstileCheck(
                    client,
                    secret=settings.turnstile_secret.get_secret_value(),
                    verify_url=settings.turnstile_verify_url,
                    timeout=settings.turnstile_timeout,
                )
            state["desk"] = SigningDesk(
                cases=cases,
                publisher=publisher,
                keys=SupporterKeys(settings.secret.get_secret_value().encode()),
                metrics=metrics,
                widgets=WidgetKeys(settings.widget_keys, required=settings.widget_key_required),
                addresses=ClientAddresses(settings.trusted_proxies),
                ip_limits=TokenBuckets(
                    RateLimit(settings.rate_limit_ip_burst, settings.rate_limit_ip_per_second),
                    clock=time.monotonic,
                    max_keys=settings.rate_limit_max_keys,
                ),
                domain_limits=DomainLimits(
                    TokenBuckets(
                        RateLimit(settings.rate_limit_domain_burst, settings.rate_limit_domain_per_second),
                        clock=time.monotonic,
                        max_keys=settings.rate_limit_max_keys,
                    ),
                    settings.rate_limit_domain_exempt,
                ),
                partners=PartnerKeys(settings.partner_keys),
                idempotency=IdempotencyWindow(
                    max_keys=settings.idempotency_max_keys,
                    ttl=settings.idempotency_ttl,
                    remember=lambda answer: answer.remembered,
                ),
                human_check=human_check,
                clock=utc_now,
                max_body_bytes=settings.max_body_bytes,
                batch_max_body_bytes=settings.batch_max_body_bytes,
                batch_max_items=settings.batch_max_items,
                broker_retry_after=settings.broker_retry_after,
            )
            follower = asyncio.create_task(
                follow_cases_forever(settings.kafka, settings.topics.cases, cases, client_id="intake-cases"),
                name="intake-cases-follower",
            )
            await publisher.start()
            state["publisher"] = publisher
            app.state.publisher = publisher  # tests look at its replacements
            try:
                yield
            finally:
                # uvicorn has stopped accepting and finished the requests in flight.
                await publisher.stop()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                logger.info("intake stopped; producer flushed")

    app = FastAPI(
        title="Clameur intake",
        version="1",
        summary="Accepts petition signatures from widgets and partners, durably.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=http_metrics)

    async def cases_ready() -> None:
        if not cases.ready.is_set():
            raise RuntimeError("still reading cases.v1")

    async def broker_ready() -> None:
        publisher = state.get("publisher")
        if publisher is None:
            raise RuntimeError("starting")
        await publisher.check()

    app.include_router(operations_router(registry, {"cases": cases_ready, "broker": broker_ready}))
    app.include_router(widget_router(load_widget_script(settings.widget_script, settings.public_reads_url)))

    async def sign_unwrapped(request: Request) -> Response:
        answer, extra_headers = await state["desk"].sign(request.path_params["case_id"], request)
        return _respond(answer, extra_headers)

    # The hot route, matched before the documented one below (same answers): a plain
    # Starlette route skips FastAPI's dependency solving, a tenth of a request's CPU at
    # surge rates.  The documented route stays for the OpenAPI schema (and would serve
    # the same answers if this one were removed).
    app.router.routes.append(_ScopedRoute(SIGNATURES_ROUTE, sign_unwrapped, methods=["POST"]))

    @app.post(
        SIGNATURES_ROUTE,
        status_code=202,
        summary="Sign: one supporter's action for one case",
        description=(
            "Answers 202 only once the signature is durable (acknowledged by the broker). "
            "Headers: `Idempotency-Key` (optional, a retry returns the first answer), "
            "`X-Clameur-Widget` or query `widget_key` (the widget's public key; needed from "
            "a web page). `website` is a honeypot: leave it out."
        ),
        response_model=SignatureReceipt,
        responses=_SIGNATURE_RESPONSES,
        openapi_extra=_request_body(
            SignatureForm,
            {
                "signature": {
                    "summary": "A supporter signs for Nawal Benaissa and wants news",
                    "value": _SIGNATURE_EXAMPLE,
                },
                "minimal": {
                    "summary": "Only the required fields",
                    "value": {
                        "first_name": "Camille",
                        "last_name": "Durand",
                        "email": "camille.durand@example.org",
                        "country": "FR",
                    },
                },
            },
        ),
    )
    async def sign(case_id: CaseId, request: Request) -> Response:
        answer, extra_headers = await state["desk"].sign(case_id, request)
        return _respond(answer, extra_headers)

    @app.options(SIGNATURES_ROUTE, include_in_schema=False)
    async def sign_preflight(case_id: CaseId, request: Request) -> Response:
        status, headers, answer = state["desk"].preflight(request)
        if answer is not None:
            return _respond(answer, headers)
        return Response(status_code=status, headers=headers)

    @app.post(
        BATCH_ROUTE,
        status_code=202,
        summary="Bulk import: a partner's paper or offline signatures",
        description=(
            "`Authorization: Bearer <partner key>`. Up to 1,000 signatures, each judged alone: "
            "the answer has a result per item (`index`, `status`, `signature_id` or `errors`). "
            "202 only once every accepted item is acknowledged by the broker; 503 if it is not."
        ),
        response_model=BatchReceipt,
        responses={
            401: _problem("Missing or unknown partner key."),
            404: _problem("No such case."),
            410: _problem("The case is won or closed."),
            413: _problem("Body too large."),
            415: _problem("Body is not JSON."),
            422: _problem("The body is not a list of signatures."),
            503: _problem("The broker did not acknowledge in time; see Retry-After."),
        },
        openapi_extra=_request_body(
            _BatchDoc,
            {
                "paper": {
                    "summary": "Two paper signatures for Nawal Benaissa",
                    "value": {
                        "signatures": [
                            {
                                "first_name": "Camille",
                                "last_name": "Durand",
                                "email": "camille.durand@example.org",
                                "country": "FR",
                            },
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
    )
    async def sign_batch(case_id: CaseId, request: Request) -> Response:
        answer = await state["desk"].sign_batch(case_id, request)
        return _respond(answer, {})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (SignatureForm, _BatchDoc):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            for path in schema["paths"].values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        if parameter.get("name") == "case_id":
                            parameter["schema"]["pattern"] = CASE_ID_PATTERN
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class _ScopedRoute(Route):
    """A plain Starlette route that records itself in the scope, as FastAPI's routes do.

    FastAPI's router sets ``scope["route"]`` only for its own routes; the metrics
    middleware labels requests by that route's path template.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


class _BatchDoc(BaseModel):
    """The bulk body as documented: ``signatures`` holds up to 1,000 signatures."""

    signatures: list[SignatureFields]


def _respond(answer: StoredAnswer, extra_headers: dict[str, str]) -> Response:
    headers = {**answer.headers, **extra_headers} if extra_headers else answer.headers
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=headers)


def app_from_environment() -> FastAPI:
    """For ``uvicorn --factory intake.app:app_from_environment`` (several workers)."""
    tune_garbage_collection()
    return create_app(IntakeSettings())
