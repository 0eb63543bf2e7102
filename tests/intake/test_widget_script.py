"""Intake serves the widget's script: cache headers, ETag/304, SRI, open to every origin."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from intake.app import create_app
from intake.settings import IntakeSettings
from intake.widget_script import WidgetScript, load_widget_script, widget_router

from clameur.web import install_problem_handlers

BUNDLE = b'(()=>{const r="__CLAMEUR_READS_URL__";console.log(r)})();\n'
READS = "https://reads.example.org/"


def _client(script: WidgetScript | None) -> httpx.AsyncClient:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(widget_router(script))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://intake.example.org")


@pytest.fixture
def script(tmp_path: Path) -> WidgetScript:
    bundle = tmp_path / "widget.js"
    bundle.write_bytes(BUNDLE)
    loaded = load_widget_script(bundle, READS)
    assert loaded is not None
    return loaded


def test_the_reads_url_is_written_into_the_script_and_hashed_as_served(script: WidgetScript) -> None:
    assert b"__CLAMEUR_READS_URL__" not in script.body
    assert b'"https://reads.example.org"' in script.body
    assert script.integrity == "sha384-" + base64.b64encode(hashlib.sha384(script.body).digest()).decode()
    assert script.version == hashlib.sha256(script.body).hexdigest()[:16]


def test_a_missing_bundle_is_none(tmp_path: Path) -> None:
    assert load_widget_script(tmp_path / "nothing.js", READS) is None


async def test_the_script_is_short_cached_open_to_all_and_revalidated(script: WidgetScript) -> None:
    async with _client(script) as client:
        answer = await client.get("/v1/widget.js", headers={"Origin": "https://free-nawal.example"})
        assert answer.status_code == 200
        assert answer.content == script.body
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
        assert answer.headers["cache-control"] == "public, max-age=300"
        assert answer.headers["access-control-allow-origin"] == "*"
        assert answer.headers["cross-origin-resource-policy"] == "cross-origin"
        assert answer.headers["x-content-type-options"] == "nosniff"
        etag = answer.headers["etag"]
        assert etag == f'"{script.version}"'

        again = await client.get("/v1/widget.js", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        changed = await client.get("/v1/widget.js", headers={"If-None-Match": '"older"'})
        assert changed.status_code == 200


async def test_the_manifest_names_the_versioned_url_and_its_integrity(script: WidgetScript) -> None:
    async with _client(script) as client:
        manifest = (await client.get("/v1/widget.json")).json()
        assert manifest == {
            "version": script.version,
            "path": f"/v1/widget.{script.version}.js",
            "url": f"https://intake.example.org/v1/widget.{script.version}.js",
            "integrity": script.integrity,
        }
        versioned = await client.get(manifest["path"])
        assert versioned.status_code == 200
        assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert versioned.headers["access-control-allow-origin"] == "*"
        digest = base64.b64encode(hashlib.sha384(versioned.content).digest()).decode()
        assert manifest["integrity"] == f"sha384-{digest}", "what SRI checks is what is served"
        assert (
            await client.get(manifest["path"], headers={"If-None-Match": versioned.headers["etag"]})
        ).status_code == 304


async def test_an_old_version_is_not_found_and_says_where_the_current_one_is(script: WidgetScript) -> None:
    async with _client(script) as client:
        answer = await client.get("/v1/widget.0123456789abcdef.js")
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
        assert "/v1/widget.json" in answer.json()["detail"]


async def test_without_a_built_widget_each_route_says_so() -> None:
    async with _client(None) as client:
        for path in ("/v1/widget.js", "/v1/widget.json", "/v1/widget.0123456789abcdef.js"):
            answer = await client.get(path)
            assert answer.status_code == 503, path
            assert "make widget" in answer.json()["detail"]


async def test_intake_serves_the_widget_built_where_its_settings_say(tmp_path: Path) -> None:
    bundle = tmp_path / "widget.js"
    bundle.write_bytes(BUNDLE)
    app = create_app(IntakeSettings(widget_script=bundle, public_reads_url=READS))
    # No lifespan needed: the script is read when the app is made, not when it starts.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.get("/v1/widget.js")
    assert answer.status_code == 200
    assert answer.content == BUNDLE.replace(b"__CLAMEUR_READS_URL__", b"https://reads.example.org")
