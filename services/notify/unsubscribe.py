"""RFC 8058 one-click unsubscribe: ``GET`` shows a confirmation, ``POST`` unsubscribes.

No cookie, no login: the signed token in the URL is the authority.  ``POST`` acts at
once, is idempotent, and answers 200 with a short page (no redirect), as mail
providers' one-click requests expect.  A forged or altered token is refused with 400:
a short HTML page for browsers, a problem+json answer for everyone else.

Unsubscribing writes a keyed suppression of the address (suppressions.v1, so a rebuilt
notify knows it): for the case, or for every case.  From everything, or from the last
case the supporter followed, the contact is forgotten too (tombstoned on contacts.v1,
rows deleted): only the suppression stays, neither the address nor the first name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from clameur.web import problem
from notify.erasure import Eraser
from notify.ledger import Preferences
from notify.messages import Templates, choose_locale
from notify.metrics import NotifyMetrics
from notify.tokens import InvalidToken, TokenSigner, UnsubscribeRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnsubscribePages:
    signer: TokenSigner
    templates: Templates
    preferences: Preferences
    metrics: NotifyMetrics
    eraser: Callable[[], Eraser]


def unsubscribe_router(pages: UnsubscribePages) -> APIRouter:
    router = APIRouter()

    def page(name: str, request: UnsubscribeRequest, action: str, status: int = 200) -> HTMLResponse:
        locale = choose_locale(request.locale, request.locale, pages.templates.locales)
        html = pages.templates.render(
            locale, name, {"locale": locale, "scope": request.scope, "action": action}
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def refuse(http: Request) -> Response:
        if "text/html" in http.headers.get("accept", ""):
            locale = choose_locale(_first_language(http), "en", pages.templates.locales)
            html = pages.templates.render(locale, "invalid_link.html", {"locale": locale})
            return HTMLResponse(html, status_code=400, headers={"Cache-Control": "no-store"})
        return problem(
            400,
            "This unsubscribe link is not valid: it may have been cut or altered. "
            "Use the whole link from the email, or reply to the email to ask to be unsubscribed.",
            title="Invalid unsubscribe link",
        )

    def verified(token: str) -> UnsubscribeRequest | None:
        try:
            return pages.signer.verify(token)
        except InvalidToken:
            return None

    @router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse)
    async def confirm(token: str, http: Request) -> Response:
        if (request := verified(token)) is None:
            return refuse(http)
        return page("unsubscribe.html", request, action=http.url.path)

    @router.post("/v1/unsubscribe/{token}", response_class=HTMLResponse)
    async def unsubscribe(token: str, http: Request) -> Response:
        if (request := verified(token)) is None:
            return refuse(http)
        if not await pages.eraser().holds(request.supporter_key):
            # Forgotten already (an earlier click, an erasure): only the suppression is
            # left, and a new unsubscription row would bring their key back.
            return page("unsubscribed.html", request, action=http.url.path)
        if await pages.preferences.unsubscribe(request.supporter_key, request.case_id):
            pages.metrics.unsubscribes.labels(request.scope).inc()
            logger.info("supporter unsubscribed", extra={"scope": request.scope, "case_id": request.case_id})
        try:
            # Always, not only when new: a second click finishes what a failed one left.
            await pages.eraser().unsubscribe(request.supporter_key, request.case_id)
        except KafkaError:
            # No news goes out already (the unsubscription above is stored); the address
            # is forgotten on the next try.
            return problem(
                503,
                "You are unsubscribed, but we could not finish forgetting your address. "
                "Please open the link again in a few minutes.",
                title="Unsubscribed, not yet forgotten",
            )
        return page("unsubscribed.html", request, action=http.url.path)

    return router


def _first_language(http: Request) -> str:
    header = http.headers.get("accept-language", "")
    first = header.split(",", 1)[0].split(";", 1)[0].strip()
    return first or "en"
