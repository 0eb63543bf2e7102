"""The confirm and "It wasn't me" pages of a confirmation email (notify's public port).

- ``GET /v1/confirm/{token}``: verifies the token, publishes ``SignatureConfirmed`` on
  signatures.v2 (key: case id), waits for the broker's ack, then answers a thank-you
  page in the signer's language.  Opening it again publishes again: tally and notify
  apply a confirmation once, so the effect is idempotent.  Opening the link is the
  whole act (no button), because a third of people never press a second button.
- ``GET /v1/reject/{token}``: a page with a button, and nothing else: mail scanners
  follow links, and must not erase anyone.
- ``POST /v1/reject/{token}``: publishes ``SignaturesRejected``, then hands the supporter
  to the erasure code (:class:`SupporterRejection`: delete, suppress, tombstone).
- A forged or altered token: 400; an expired one: 410; both a page saying what to do
  (HTML for browsers, problem+json otherwise).  The broker away: 503, nothing done.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from clameur.events import Event, SignatureConfirmed, SignaturesRejected, utc_now
from clameur.web import problem
from notify.messages import Templates, choose_locale
from notify.metrics import NotifyMetrics
from notify.tokens import (
    ConfirmationAction,
    ConfirmationRequest,
    ConfirmationSigner,
    ExpiredToken,
    InvalidToken,
)

logger = logging.getLogger(__name__)

PublishSignatureEvent = Callable[[Event, str], Awaitable[None]]
"""Publish an event on signatures.v2 under a key (the case id) and wait for the ack."""


class SupporterRejection(Protocol):
    """What "It wasn't me" does to notify's data, provided by :mod:`notify.erasure`.

    Called after ``SignaturesRejected`` is acknowledged: forget the supporter's contact
    and rows, tombstone contacts.v1, write a suppression for every case.
    """

    async def __call__(self, supporter_key: str, case_id: str) -> None: ...


@dataclass(frozen=True)
class ConfirmationPages:
    signer: ConfirmationSigner
    templates: Templates
    metrics: NotifyMetrics
    publish: PublishSignatureEvent
    reject_supporter: SupporterRejection


def confirmation_router(pages: ConfirmationPages) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/confirm/{token}", response_class=HTMLResponse)
    async def confirm(token: str, http: Request) -> Response:
        return await _publish_then(pages, token, http, "confirm", _confirmed)

    @router.get("/v1/reject/{token}", response_class=HTMLResponse)
    async def ask_rejection(token: str, http: Request) -> Response:
        request = _verified(pages, token, "reject", http)
        if isinstance(request, Response):
            return request
        return _page(pages, "reject.html", request.locale, action=http.url.path)

    @router.post("/v1/reject/{token}", response_class=HTMLResponse)
    async def reject(token: str, http: Request) -> Response:
        return await _publish_then(pages, token, http, "reject", _rejected)

    return router


async def _publish_then(
    pages: ConfirmationPages,
    token: str,
    http: Request,
    action: ConfirmationAction,
    done: Callable[[ConfirmationPages, ConfirmationRequest], Awaitable[Response]],
) -> Response:
    """Verify the link, publish its event and wait for the ack, then answer ``done``.

    A forged or expired link is refused (400, 410) and a broker failure answers 503: in
    both cases nothing was done.
    """
    request = _verified(pages, token, action, http)
    if isinstance(request, Response):
        return request
    kind = SignatureConfirmed if action == "confirm" else SignaturesRejected
    event = kind(case_id=request.case_id, supporter_key=request.supporter_key)
    try:
        await pages.publish(event, event.case_id)
    except Exception as error:  # noqa: BLE001 - any broker failure: nothing was done, say so
        logger.warning("publishing from a link failed", extra={"error": type(error).__name__})
        return problem(503, "We could not record this just now. Open the link again in a minute.")
    return await done(pages, request)


async def _confirmed(pages: ConfirmationPages, request: ConfirmationRequest) -> Response:
    pages.metrics.confirmation_links.labels("confirm").inc()
    # Debug, not info: a line per click was 2% of notify's CPU under load (20 us each, a
    # surge clicks hundreds a second), and the counter above says the same.
    logger.debug("signature confirmed", extra={"case_id": request.case_id})
    return _page(pages, "confirmed.html", request.locale)


async def _rejected(pages: ConfirmationPages, request: ConfirmationRequest) -> Response:
    await pages.reject_supporter(request.supporter_key, request.case_id)
    pages.metrics.confirmation_links.labels("reject").inc()
    logger.info("signatures rejected by the address's owner", extra={"case_id": request.case_id})
    return _page(pages, "rejected.html", request.locale)


def _verified(
    pages: ConfirmationPages, token: str, action: ConfirmationAction, http: Request
) -> ConfirmationRequest | Response:
    try:
        return pages.signer.verify(token, action, utc_now())
    except InvalidToken as error:
        return _refuse(pages, http, error)


def _page(
    pages: ConfirmationPages, name: str, locale: str, status: int = 200, **context: object
) -> HTMLResponse:
    chosen = choose_locale(locale, locale, pages.templates.locales)
    html = pages.templates.render(chosen, name, {"locale": chosen, **context})
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _refuse(pages: ConfirmationPages, http: Request, error: InvalidToken) -> Response:
    expired = isinstance(error, ExpiredToken)
    status = 410 if expired else 400
    if "text/html" in http.headers.get("accept", ""):
        locale = error.request.locale if isinstance(error, ExpiredToken) else _first_language(http)
        return _page(pages, "expired_link.html" if expired else "invalid_link.html", locale, status)
    detail = (
        "This link has expired. To support the case, sign the petition again: a new email will come."
        if expired
        else "This link is not valid: it may have been cut or altered. Use the whole link from the email."
    )
    return problem(status, detail, title="Expired link" if expired else "Invalid link")


def _first_language(http: Request) -> str:
    header = http.headers.get("accept-language", "")
    first = header.split(",", 1)[0].split(";", 1)[0].strip()
    return first or "en"
