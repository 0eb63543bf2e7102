"""One route that FastAPI documents and that serves its requests like a plain Starlette route.

Solving a FastAPI route's dependencies (and its two exit stacks) was a tenth of a
signature's CPU at surge rates; intake's handlers read the request themselves, so they
need none of it.  :class:`DirectRoute` is an ``APIRoute`` for the OpenAPI document
(summary, responses, response model, ``openapi_extra``) whose requests go straight to its
handler through Starlette's ``request_response``, as a plain ``Route``'s would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

Handler = Callable[[Request], Awaitable[Response]]


class DirectRoute(APIRoute):
    """An ``APIRoute`` whose handler is called with the request alone, nothing solved.

    The handler's signature is ``(request) -> Response``; it reads its path parameters
    from ``request.path_params`` and its body itself, so what the document says about
    them is declared (``openapi_extra``), not inferred.  Dependencies and a body limit are
    refused: they would be documented and never applied.  Mount it among the app's own
    routes; through ``include_router`` FastAPI's per-request wrapper comes back.
    """

    def __init__(self, path: str, endpoint: Handler, **documentation: Any) -> None:
        super().__init__(path, endpoint, **documentation)
        if self.dependencies or self.max_body_size is not None:
            raise TypeError(
                f"{path}: a DirectRoute applies no dependencies and no body limit; "
                "check and limit the request in its handler"
            )
        # Starlette's wrapper, not FastAPI's: the same exception handling, without the
        # exit stacks kept for dependencies this route does not have.
        self.app = request_response(endpoint)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # Also what FastAPI calls when the route is included through a router.
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint
