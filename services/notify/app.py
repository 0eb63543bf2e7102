"""The notify service: supporter list, case news, sending, unsubscribe and erasure.

``create_app(settings)`` builds nothing at import time and opens nothing: its lifespan
(:class:`notify.running.NotifyLifespan`) opens the connections and starts the loops, and
drains them in order on shutdown.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from clameur.admin import AdminDoor
from clameur.admission import Lane, Rule, install_admission
from clameur.consumer import ConsumerMetrics
from clameur.web import HttpMetrics, HttpMetricsMiddleware, install_problem_handlers, operations_router
from notify.confirmation import ConfirmationPages, SupporterRejection, confirmation_router
from notify.contacts import ContactCipher
from notify.erasure import ERASURE_ACTIONS, Eraser, ErasureDesk, erasure_router, reject_supporter
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
        signer=TokenSigner(*settings.token_masters),
        confirmation_signer=ConfirmationSigner(*settings.token_masters),
        cipher=ContactCipher(settings.secret.get_secret_value()),
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
    door = AdminDoor(registry, SERVICE, admin_token, ERASURE_ACTIONS)
    app.include_router(erasure_router(ErasureDesk(secret, door, eraser)))
    app.include_router(
        confirmation_router(
            ConfirmationPages(
                parts.confirmation_signer,
                parts.templates,
                parts.metrics,
                signatures_publisher(settings, lambda: lifespan.running),
                _reject_supporter(eraser),
            )
        )
    )
    install_admission(app, registry, SERVICE, settings, _page_rules(settings))
    return app


def _page_rules(settings: NotifySettings) -> list[Rule]:
    """The pages a supporter opens from an email: one lane, bounded; the admin erasure API,
    health and metrics are never refused."""
    pages = Lane(
        "pages",
        settings.notify_pages_max_in_flight,
        "Many supporters are using their links at once; nothing was changed yet. Please reload "
        "this page in a few seconds: the link still works.",
    )
    methods = frozenset({"GET", "POST"})
    return [Rule(pages, methods, prefix) for prefix in ("/v1/confirm/", "/v1/reject/", "/v1/unsubscribe/")]


def _reject_supporter(eraser: Callable[[], Eraser]) -> SupporterRejection:
    """ "It wasn't me" in notify's data: the running eraser's :func:`reject_supporter`
    (suppression of the address for every case, contact tombstoned, rows deleted)."""

    async def reject(supporter_key: str, case_id: str) -> None:
        await reject_supporter(eraser(), supporter_key, case_id)

    return reject
