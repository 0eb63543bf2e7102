"""Widget keys and CORS: which browser origins may post signatures.

A widget key is public (like a publishable key): it names the embedding and lists the
origins allowed to use it.  The rules:

- a request carrying ``Origin`` (a browser, cross-origin) needs a known widget key whose
  origins include that origin, else 403; the answer then carries
  ``Access-Control-Allow-Origin: <that origin>``, never ``*``;
- a request without ``Origin`` (a server, curl) needs no key unless
  ``widget_key_required`` is set; a key it does send must be known;
- the key comes in the ``X-Clameur-Widget`` header or the ``widget_key`` query parameter.
  A preflight cannot carry custom header values, so a preflight with the query parameter
  is judged against that key's origins, and one without against every key's origins
  (the real request is then judged against its key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDGET_HEADER = "x-clameur-widget"
WIDGET_QUERY = "widget_key"

ALLOWED_HEADERS = "Content-Type, Idempotency-Key, X-Clameur-Widget"
EXPOSED_HEADERS = "Retry-After, Idempotent-Replayed"
PREFLIGHT_MAX_AGE = "600"


@dataclass(frozen=True)
class WidgetVerdict:
    """``allowed`` or not; ``cors_origin`` is the origin to echo in the CORS headers."""

    allowed: bool
    detail: str = ""
    cors_origin: str | None = None
    widget_key: str | None = None


def _origin(value: str) -> str:
    return value.strip().rstrip("/").lower()


class WidgetKeys:
    """The configured widget keys and their origins."""

    def __init__(self, keys: Mapping[str, Sequence[str]], *, required: bool) -> None:
        self._origins = {
            key: frozenset(_origin(origin) for origin in origins) for key, origins in keys.items()
        }
        self._any_origin = frozenset().union(*self._origins.values()) if self._origins else frozenset()
        self.required = required

    def judge(self, key: str | None, origin: str | None) -> WidgetVerdict:
        """May a request with this widget key and ``Origin`` header post a signature?"""
        if key is not None:
            origins = self._origins.get(key)
            if origins is None:
                return WidgetVerdict(False, "This widget key is unknown; check the widget's configuration.")
            if origin is None:
                return WidgetVerdict(True, widget_key=key)
            if _origin(origin) in origins:
                return WidgetVerdict(True, cors_origin=origin, widget_key=key)
            return WidgetVerdict(False, "This widget key may not be used from this site.")
        if origin is not None:
            return WidgetVerdict(False, "A widget key is needed to sign from a web page.")
        if self.required:
            return WidgetVerdict(False, "A widget key is needed (header X-Clameur-Widget).")
        return WidgetVerdict(True)

    def judge_preflight(self, key: str | None, origin: str | None) -> WidgetVerdict:
        """May this origin send the real request?  See the module docstring."""
        if origin is None:
            return WidgetVerdict(False, "A preflight request needs an Origin header.")
        if key is not None:
            return self.judge(key, origin)
        if _origin(origin) in self._any_origin:
            return WidgetVerdict(True, cors_origin=origin)
        return WidgetVerdict(False, "This site is not allowed to use Clameur's widget.")


def cors_headers(origin: str) -> dict[str, str]:
    """Headers of an answer a browser at ``origin`` may read."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": EXPOSED_HEADERS,
        "Vary": "Origin",
    }


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        "Vary": "Origin",
    }
