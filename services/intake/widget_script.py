"""The petition widget's script, served by intake (the origin its signatures go to).

``GET /v1/widget.js`` is the name campaign pages embed; it is cached briefly, so a new
release reaches every page within minutes.  ``GET /v1/widget.<version>.js`` is the same
bytes under a name that changes with them, cached for a year (``immutable``), for
pages that pin a release with Subresource Integrity; ``GET /v1/widget.json`` says which
versioned URL is current and its ``sha384`` integrity.  All three carry an ETag and
answer ``If-None-Match`` with 304, and may be loaded from any origin
(``Access-Control-Allow-Origin: *`` for ``crossorigin`` script tags and SRI,
``Cross-Origin-Resource-Policy: cross-origin`` for pages that isolate themselves).

The built bundle (``widget/dist/widget.js``, built by ``make widget``) holds a
placeholder for the public reads' URL (tally's counts and live stream), replaced here
once at start, so a page names one URL and the bytes served are the bytes hashed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from clameur.web import Problem

logger = logging.getLogger(__name__)

READS_PLACEHOLDER = b"__CLAMEUR_READS_URL__"
SCRIPT_ROUTE = "/v1/widget.js"
VERSIONED_ROUTE = "/v1/widget.{version}.js"
MANIFEST_ROUTE = "/v1/widget.json"
JAVASCRIPT = "text/javascript; charset=utf-8"
SHORT_CACHE = "public, max-age=300"
LONG_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class WidgetScript:
    """The bytes served and what names them: ``version`` (in the versioned file name),
    ``integrity`` (for SRI) and the strong ``etag``."""

    body: bytes
    version: str
    integrity: str
    etag: str

    @classmethod
    def of(cls, bundle: bytes, reads_url: str) -> WidgetScript:
        body = bundle.replace(READS_PLACEHOLDER, reads_url.rstrip("/").encode())
        version = hashlib.sha256(body).hexdigest()[:16]
        integrity = "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()
        return cls(body=body, version=version, integrity=integrity, etag=f'"{version}"')


def load_widget_script(path: Path, reads_url: str) -> WidgetScript | None:
    """The built bundle at ``path`` ready to serve, or None (logged) when it is not built."""
    try:
        bundle = path.read_bytes()
    except OSError:
        logger.warning("the widget is not built (%s is missing): run `make widget`", path)
        return None
    return WidgetScript.of(bundle, reads_url)


def _matches(if_none_match: str | None, etag: str) -> bool:
    # Weak comparison (RFC 9110 13.1.2); tally.views.etag_matches is the same rule for
    # tally's documents (no shared home for it yet: see the widget's merge notes).
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == wanted for candidate in if_none_match.split(","))


def _open_to_all(etag: str, cache_control: str) -> dict[str, str]:
    return {
        "ETag": etag,
        "Cache-Control": cache_control,
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }


def widget_router(script: WidgetScript | None) -> APIRouter:
    """The widget's routes; without a built ``script`` they answer 503 and say why."""
    router = APIRouter(tags=["widget"])

    def serve(request: Request, body: bytes, media_type: str, etag: str, cache_control: str) -> Response:
        headers = _open_to_all(etag, cache_control)
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    def built() -> WidgetScript:
        if script is None:
            raise Problem(
                503, "The widget is not built on this server; its operators must run `make widget`."
            )
        return script

    @router.get(SCRIPT_ROUTE, summary="The petition widget (embed this URL; cached for 5 minutes)")
    async def widget(request: Request) -> Response:
        current = built()
        return serve(request, current.body, JAVASCRIPT, current.etag, SHORT_CACHE)

    @router.get(MANIFEST_ROUTE, summary="The current versioned widget URL and its SRI integrity")
    async def manifest(request: Request) -> Response:
        current = built()
        path = VERSIONED_ROUTE.format(version=current.version)
        body = orjson.dumps(
            {
                "version": current.version,
                "path": path,
                "url": str(request.base_url).rstrip("/") + path,
                "integrity": current.integrity,
            }
        )
        return serve(request, body, "application/json", current.etag, SHORT_CACHE)

    @router.get(VERSIONED_ROUTE, summary="The widget under its version's name (cached for a year)")
    async def versioned(version: str, request: Request) -> Response:
        current = built()
        if version != current.version:
            raise Problem(
                404,
                f"This server has no widget version {version!r}; {MANIFEST_ROUTE} names the current one.",
            )
        return serve(request, current.body, JAVASCRIPT, current.etag, LONG_CACHE)

    return router
