"""Cloudflare Turnstile verified server-side, against a local siteverify that answers like
Cloudflare does for its documented test secrets (there is no internet here)."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clameur.topics import Topics
from tests.conftest import Infra
from tests.intake.conftest import SIGNER, Intake, answer_json, case_state, publish_cases
from tests.support import free_port, metric, read_topic

# Cloudflare's documented test secret keys (developers.cloudflare.com/turnstile/troubleshooting/testing/).
ALWAYS_PASSES = "1x0000000000000000000000000000000AA"
ALWAYS_FAILS = "2x0000000000000000000000000000000AA"
ALREADY_SPENT = "3x0000000000000000000000000000000AA"
DUMMY_TOKEN = "XXXX.DUMMY.TOKEN.XXXX"


class Siteverify(BaseHTTPRequestHandler):
    forms: list[dict[str, str]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        form = {
            key: values[0] for key, values in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()
        }
        self.forms.append(form)
        secret, token = form.get("secret"), form.get("response")
        if not token:
            verdict = {"success": False, "error-codes": ["missing-input-response"]}
        elif secret == ALWAYS_PASSES:
            verdict = {
                "success": True,
                "challenge_ts": "2025-03-08T12:00:00.000Z",
                "hostname": "example.com",
                "error-codes": [],
                "action": "",
                "cdata": "",
            }
        elif secret == ALWAYS_FAILS:
            verdict = {"success": False, "error-codes": ["invalid-input-response"]}
        elif secret == ALREADY_SPENT:
            verdict = {"success": False, "error-codes": ["timeout-or-duplicate"]}
        else:
            verdict = {"success": False, "error-codes": ["invalid-input-secret"]}
        answer_json(self, verdict)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def siteverify() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Siteverify)
    Siteverify.forms = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/turnstile/v0/siteverify"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_turnstile_decides_when_it_is_on(
    intake: Intake, infra: Infra, topics: Topics, siteverify: str, new_id: Callable[[str], str]
) -> None:
    case_id = new_id("nawal")
    await publish_cases(infra.kafka, topics, case_state(case_id))
    url = f"/v1/cases/{case_id}/signatures"
    human = {**SIGNER, "turnstile_token": DUMMY_TOKEN}

    async with intake(turnstile_secret=ALWAYS_PASSES, turnstile_verify_url=siteverify) as (_, client):
        passed = await client.post(url, json=human)
        assert passed.status_code == 202
        missing = await client.post(url, json=SIGNER)
        assert missing.status_code == 403
    assert Siteverify.forms[0] == {"secret": ALWAYS_PASSES, "response": DUMMY_TOKEN, "remoteip": "127.0.0.1"}

    for secret in (ALWAYS_FAILS, ALREADY_SPENT):
        async with intake(turnstile_secret=secret, turnstile_verify_url=siteverify) as (_, client):
            failed = await client.post(url, json=human)
            assert failed.status_code == 403
            assert failed.headers["content-type"] == "application/problem+json"
            metrics = (await client.get("/metrics")).text
        assert metric(metrics, "clameur_intake_rejections_total", reason="human_check") == 1

    unreachable = f"http://127.0.0.1:{free_port()}/siteverify"
    async with intake(turnstile_secret=ALWAYS_PASSES, turnstile_verify_url=unreachable) as (_, client):
        down = await client.post(url, json=human)
        assert down.status_code == 503
        assert down.headers["retry-after"]

    async with intake() as (_, client):  # off by default: no token needed
        assert (await client.post(url, json=SIGNER)).status_code == 202

    records = await read_topic(infra.kafka, topics.signatures, at_least=2)
    assert len(records) == 2
