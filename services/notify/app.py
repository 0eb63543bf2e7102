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
from notify.confirmation import ConfirmationPages, SupporterRejection, confirmation_router
from notify.contacts import ContactCipher
from notify.erasure import ErasureDesk, erasure_router
from notify.ledger import Preferences
from notify.messages import Templates
from notify.metrics import NotifyMetrics
from notify.running import NotifyLifespan, NotifyParts, readiness_checks, signatures_publisher
from notify.settings import NotifySettings
from notify.tokens import ConfirmationSigner, TokenSigner
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
        confirmation_signer=ConfirmationSigner(settings.secret.get_secret_value()),
        cipher=ContactCipher(settings.secret.get_secret_value()),
        preferences=Preferences(),
    )
    lifespan = NotifyLifespan(parts)
    secret, admin_token = settings.secret.get_secret_value(), settings.admin_token.get_secret_value()

    app = FastAPI(title="Clameur notify", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry, SERVICE))
    app.include_router(operations_router(registry, readiness_checks(settings, lambda: lifespan.running)))
    app.include_router(
        unsubscribe_router(UnsubscribePages(parts.signer, parts.templates, parts.preferences, parts.metrics))
    )
    app.include_router(erasure_router(ErasureDesk(secret, admin_token, parts.preferences)))
    app.include_router(
        confirmation_router(
            ConfirmationPages(
                parts.confirmation_signer,
                parts.templates,
                parts.metrics,
                signatures_publisher(settings, lambda: lifespan.running),
                _reject_supporter(parts.preferences),
            )
        )
    )
    return app


def _reject_supporter(preferences: Preferences) -> SupporterRejection:
    """ "It wasn't me" in notify's data.

    TODO(merge, wt-notify-b): call ``notify.erasure.reject_supporter(...)`` here (delete
    rows, suppression "*", contacts.v1 tombstone).  Until then: notify's own erasure
    (rows deleted, tombstone in notify.erasures).
    """

    async def reject(supporter_key: str, case_id: str) -> None:
        await preferences.erase(supporter_key)

    return reject
