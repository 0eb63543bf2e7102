"""One definition per signing route: served directly, documented by FastAPI."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from intake.app import create_app
from intake.direct_route import DirectRoute
from intake.routes import BATCH_ROUTE, SIGNATURES_ROUTE
from intake.settings import IntakeSettings
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response


def test_each_signing_route_is_defined_once_and_documented() -> None:
    app = create_app(IntakeSettings(kafka="127.0.0.1:1"))
    signing = (SIGNATURES_ROUTE, BATCH_ROUTE)
    posts = [
        route
        for route in app.routes
        if isinstance(route, APIRoute) and route.path in signing and "POST" in (route.methods or ())
    ]
    assert sorted(route.path for route in posts) == [SIGNATURES_ROUTE, BATCH_ROUTE]
    assert all(isinstance(route, DirectRoute) for route in posts)
    paths = app.openapi()["paths"]
    for path in (SIGNATURES_ROUTE, BATCH_ROUTE):
        operation = paths[path]["post"]
        assert [parameter["name"] for parameter in operation["parameters"]] == ["case_id"]
        assert "examples" in operation["requestBody"]["content"]["application/json"]
    # The signing routes and the widget's script, nothing else (operations stay out).
    assert set(paths) == {
        SIGNATURES_ROUTE,
        BATCH_ROUTE,
        "/v1/widget.js",
        "/v1/widget.{version}.js",
        "/v1/widget.json",
    }


async def _echo(request: Request) -> Response:
    return PlainTextResponse(f"{request.path_params['slug']} {await request.body()!r}")


async def test_a_direct_route_hands_the_request_to_its_handler_unsolved() -> None:
    app = FastAPI(routes=[DirectRoute("/echo/{slug}", _echo, methods=["POST"], summary="Echo")])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        answer = await client.post("/echo/nawal", content=b"not json at all")
        wrong_method = await client.get("/echo/nawal")
    assert answer.status_code == 200 and answer.text == "nawal b'not json at all'"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert app.openapi()["paths"]["/echo/{slug}"]["post"]["summary"] == "Echo"


def _guard() -> None:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    "unapplied",
    [{"dependencies": [Depends(_guard)]}, {"max_body_size": 1024}],
    ids=["dependencies", "body limit"],
)
def test_a_direct_route_refuses_what_it_would_never_apply(unapplied: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="applies no dependencies and no body limit"):
        DirectRoute("/echo/{slug}", _echo, methods=["POST"], **unapplied)
