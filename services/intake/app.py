"""Intake's HTTP application: what it is made of, and the lifespan that starts and drains it.

``create_app(settings)`` builds an app and nothing else; its resources (the producer, the
cases.v1 follower, the Turnstile client, the desk) are made when the app starts and
closed when it stops (:mod:`intake.resources`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from clameur.admission import install_admission
from clameur.serving import tune_garbage_collection
from clameur.web import HttpMetrics, HttpMetricsMiddleware, install_problem_handlers, operations_router
from intake import openapi
from intake.abuse import ForwardedForJoined
from intake.resources import Running, open_intake
from intake.routes import admission_rules, signature_routes
from intake.settings import IntakeSettings
from intake.widget_script import load_widget_script, widget_router


def create_app(settings: IntakeSettings) -> FastAPI:
    """Intake, configured by ``settings``; resources are made when the app starts."""
    registry = CollectorRegistry()
    running = Running()
    app = FastAPI(
        title=openapi.TITLE,
        version=openapi.VERSION,
        summary=openapi.SUMMARY,
        # The signing routes first and at the top: the hot path is matched without
        # walking an included router (FastAPI's include_router adds work per request).
        routes=signature_routes(running),
        lifespan=_lifespan(settings, registry, running),
    )
    app.state.intake = running  # the running resources, for tests that look inside
    install_problem_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry, "intake"))
    if settings.trusted_proxies:
        app.add_middleware(ForwardedForJoined)
    app.include_router(operations_router(registry, running.readiness_checks()))
    app.include_router(widget_router(load_widget_script(settings.widget_script, settings.public_reads_url)))
    openapi.document(app)
    install_admission(app, registry, "intake", settings, admission_rules(settings))
    return app


def _lifespan(
    settings: IntakeSettings, registry: CollectorRegistry, running: Running
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_intake(settings, registry) as resources:
            with running.serving(resources):
                yield

    return lifespan


def app_from_environment() -> FastAPI:
    """For ``uvicorn --factory intake.app:app_from_environment`` (several workers)."""
    tune_garbage_collection()
    return create_app(IntakeSettings())
