"""HTTP pieces every service shares: RFC 9457 problems, health, readiness, metrics.

Every error leaves as ``application/problem+json`` with a ``detail`` a person can read
and, for validation errors, the offending fields.  Nothing is left to answer a bare 500.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_JSON = "application/problem+json"

logger = logging.getLogger(__name__)

_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid fields",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    """An RFC 9457 problem response; ``extra`` members are added to the body."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


class Problem(Exception):
    """Raise from a route to answer with a problem; see :func:`problem` for the fields."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.errors = errors
        self.headers = headers
        self.extra = extra

    def response(self) -> ProblemResponse:
        return problem(
            self.status,
            self.detail,
            title=self.title,
            errors=self.errors,
            headers=self.headers,
            **self.extra,
        )


def field_errors(
    error: ValidationError | RequestValidationError, *, messages: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"field": "consent.updates", "message": "..."}``; no input echoed.

    A request's errors (FastAPI's) are named without the part of the request they are in
    (``body``, ``query``, ``path``); a model's by its fields alone; ``body`` when there is
    no field.  A validator's message keeps its own words, without pydantic's "Value error, ";
    ``messages`` replaces the message of an error type (e.g. ``extra_forbidden``).
    """
    request_parts: tuple[str, ...] = ()
    if isinstance(error, RequestValidationError):
        details, request_parts = error.errors(), _REQUEST_PARTS
    else:
        details = error.errors(include_url=False, include_input=False)
    result = []
    for detail in details:
        location = [str(part) for part in detail.get("loc", ()) if part not in request_parts]
        message = (messages or {}).get(detail.get("type", "")) or str(detail.get("msg", ""))
        message = message.removeprefix("Value error, ")
        result.append({"field": ".".join(location) or "body", "message": message})
    return result


_REQUEST_PARTS = ("body", "query", "path")


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem+json answer."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response()

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = field_errors(exc)
        fields = ", ".join(sorted({error["field"] for error in errors}))
        return problem(422, f"Some fields are missing or invalid: {fields}.", errors=errors)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is nothing at {request.url.path}."
        return problem(exc.status_code, detail, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Something went wrong on our side; please try again later.")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


ReadinessCheck = Callable[[], Awaitable[None]]
"""Raises when a dependency (broker, database) cannot be reached."""


def operations_router(registry: CollectorRegistry, checks: Mapping[str, ReadinessCheck]) -> APIRouter:
    """``/healthz`` (alive), ``/readyz`` (every dependency answers), ``/metrics``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> Response:
        down = sorted([name for name, check in checks.items() if not await _answers(name, check)])
        if down:
            # The dependency's name only: an error's text can hold a host, a DSN, a row.
            return problem(
                503,
                "Not ready: " + ", ".join(down) + " cannot be reached.",
                down=down,
                checks=sorted(checks),
                headers={"Retry-After": "5"},
            )
        return JSONResponse({"status": "ready", "checks": sorted(checks)})

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


async def _answers(name: str, check: ReadinessCheck) -> bool:
    try:
        await check()
    except Exception as error:  # noqa: BLE001 - any failure means "not ready", said by name
        logger.warning("readiness check failed", extra={"check": name, "error": type(error).__name__})
        return False
    return True


class HttpMetrics:
    """Request count and duration by route template, method and status (bounded labels)."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.requests = Counter(
            "clameur_http_requests",
            "HTTP requests answered.",
            ["service", "route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "clameur_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["service", "route", "method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )


class HttpMetricsMiddleware:
    """Pure ASGI middleware (cheap on the hot path) feeding :class:`HttpMetrics`."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Bound children by (route, method, status): ``labels()`` per request is a lock,
        # a tuple and a dict lookup per metric, measurable at thousands of requests/s.
        self._children: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}

    @staticmethod
    def _route(scope: Scope) -> str:
        # The router records the route it matched in the scope: its path template is a
        # bounded label; anything unmatched (404s, probes of random URLs) is "other".
        return str(getattr(scope.get("route"), "path", None) or "other")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            key = (self._route(scope), str(scope.get("method", "GET")), status)
            children = self._children.get(key)
            if children is None:
                children = self._bind(*key)
            duration, requests = children
            duration.observe(time.perf_counter() - started)
            requests.inc()

    def _bind(self, route: str, method: str, status: int) -> tuple[Histogram, Counter]:
        if len(self._children) >= _MAX_BOUND_CHILDREN:
            self._children.clear()  # odd methods from the internet: keep memory bounded
        labels = (self.metrics.service, route, method)
        children = (self.metrics.duration.labels(*labels), self.metrics.requests.labels(*labels, str(status)))
        self._children[(route, method, status)] = children
        return children


_MAX_BOUND_CHILDREN = 1000
