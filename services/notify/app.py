"""The notify service: supporter list, case news, sending, unsubscribe and erasure.

``create_app(settings)`` builds nothing at import time and opens nothing: its lifespan
(:class:`notify.running.NotifyLifespan`) opens the connections and starts the loops, and
drains them in order on shutdown.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from clameur.consumer import ConsumerMetrics
from clameur.web import HttpMetrics, HttpMetricsMiddleware, install_problem_handlers, operations_router
from notify.erasure import Eraser, ErasureDesk, erasure_router
from notify.ledger import Preferences
from notify.messages import Templates
from notify.metrics import NotifyMetrics
from notify.running import NotifyLifespan, NotifyParts, readiness_checks
from notify.settings import NotifySettings
from notify.tokens import TokenSigner
from notify.unsubscribe import UnsubscribePages, unsubscribe_router

SERVICE = "notify"


def create_app(settings: NotifySettings) -> FastAPI:
    """The notify ASGI app: its parts, its lifespan, its routes."""
    registry = CollectorRegistry()
    parts = NotifyParts(
        settings=settings,
        metrics=NotifyMetrics(registry),
        consumer_metrics=ConsumerMetrics(registry, SERVICE),
        templates=Templates(),
        signer=TokenSigner(settings.secret.get_secret_value()),
        preferences=Preferences(),
    )
    lifespan = NotifyLifespan(parts)
    secret, admin_token = settings.secret.get_secret_value(), settings.admin_token.get_secret_value()

    app = FastAPI(title="Clameur notify", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry, SERVICE))
    app.include_router(operations_router(registry, readiness_checks(settings, lambda: lifespan.running)))

    def eraser() -> Eraser:
        return lifespan.running.eraser

    app.include_router(
        unsubscribe_router(
            UnsubscribePages(parts.signer, parts.templates, parts.preferences, parts.metrics, eraser)
        )
    )
    app.include_router(erasure_router(ErasureDesk(secret, admin_token, eraser)))
    return app
