"""Every answer of the signing contract, against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from clameur.events import CaseStatus, decode_contact, decode_signature
from clameur.supporters import SupporterKeys
from clameur.topics import Topics
from tests.conftest import TEST_SECRET, Infra
from tests.intake.conftest import SIGNER, Intake, case_state, publish_cases, won_state
from tests.support import metric, read_topic

BOT = {**SIGNER, "website": "http://x.example"}
"""A signer who filled the honeypot field, which people never see."""


async def test_an_accepted_signature_is_on_the_topic_keyed_by_case(
    intake: Intake, infra: Infra, topics: Topics, nawal: str
) -> None:
    async with intake() as (_, client):
        quiet = await client.post(f"/v1/cases/{nawal}/signatures", json=SIGNER)
        loud = await client.post(
            f"/v1/cases/{nawal}/signatures",
            json={
                **SIGNER,
                "first_name": "Youssef",
                "email": " Y.Amrani@Example.ORG ",
                "country": "ma",
                "locale": "en",
                "action": "letter",
                "postal_code": "20000",
                "consent": {"updates": True},
                "source": {"widget": "home", "page_url": "https://free-nawal.example/", "referrer": None},
            },
        )
        assert quiet.status_code == 202, quiet.text
        assert loud.status_code == 202, loud.text
        assert quiet.json()["status"] == "accepted"
        metrics = (await client.get("/metrics")).text

    records = await read_topic(infra.kafka, topics.signatures, at_least=2)
    assert len(records) == 2
    by_id = {str(decode_signature(record.value).signature_id): record for record in records}
    first = by_id[quiet.json()["signature_id"]]
    second = by_id[loud.json()["signature_id"]]
    assert first.key == second.key == nawal.encode()

    keys = SupporterKeys.from_master(TEST_SECRET)
    quiet_event = decode_signature(first.value)
    assert quiet_event.consent.updates is False
    assert quiet_event.supporter_key == keys.of_address(SIGNER["email"])
    assert (quiet_event.locale, quiet_event.action, quiet_event.country) == ("fr", "signature", "FR")

    loud_event = decode_signature(second.value)
    assert loud_event.consent.updates is True
    assert loud_event.supporter_key == keys.of("y.amrani@example.org")
    assert loud_event.email_domain == "example.org"
    assert (loud_event.locale, loud_event.action, loud_event.country) == ("en", "letter", "MA")
    assert b"20000" not in second.value  # the postal code is checked, published nowhere
    assert loud_event.source.page_url == "https://free-nawal.example/"

    # Only the supporter who asked for news has a contact (a "none" case): as typed, trimmed.
    [contact] = [
        decode_contact(record.value) for record in await read_topic(infra.kafka, topics.contacts, at_least=1)
    ]
    assert (contact.supporter_key, contact.email) == (loud_event.supporter_key, "Y.Amrani@Example.ORG")

    assert metric(metrics, "clameur_intake_signatures_accepted_total", action="signature") == 1
    assert metric(metrics, "clameur_intake_signatures_accepted_total", action="letter") == 1
    # Records handed to the producer: two signatures and one contact.
    assert metric(metrics, "clameur_intake_produce_attempts_total") == 3
    assert metric(metrics, "clameur_intake_cases_known") == 1
    assert "camille" not in metrics.lower()


async def test_refusals_answer_problems_and_publish_nothing(
    intake: Intake, infra: Infra, topics: Topics, nawal: str, new_id: Callable[[str], str]
) -> None:
    won, closed = new_id("won"), new_id("closed")
    await publish_cases(
        infra.kafka,
        topics,
        case_state(won),
        won_state(won),
        case_state(closed, version=3, status=CaseStatus.CLOSED),
    )
    url = f"/v1/cases/{nawal}/signatures"
    async with intake() as (_, client):
        unknown = await client.post("/v1/cases/nobody-here/signatures", json=SIGNER)
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"

        gone = await client.post(f"/v1/cases/{won}/signatures", json=SIGNER)
        assert gone.status_code == 410
        assert gone.json()["case_status"] == "won"
        assert gone.json()["headline"]["en"] == "Nawal Benaissa is free!"
        shut = await client.post(f"/v1/cases/{closed}/signatures", json=SIGNER)
        assert (shut.status_code, shut.json()["case_status"]) == (410, "closed")

        too_big = await client.post(url, json={**SIGNER, "last_name": "x" * 9000})
        assert too_big.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            # No Content-Length: only the streamed size can tell.
            yield b'{"first_name": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        streamed = await client.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413

        form = await client.post(url, data={"first_name": "Camille"})
        assert form.status_code == 415
        no_type = await client.post(url, content=orjson.dumps(SIGNER))
        assert no_type.status_code == 415

        invalid = await client.post(url, json={**SIGNER, "first_name": "Cam\nille", "country": "XX"})
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"
        fields = {error["field"] for error in invalid.json()["errors"]}
        assert fields == {"first_name", "country"}
        assert "first_name" in invalid.json()["detail"]
        assert "Cam\nille" not in invalid.text

        encoded = await client.post(url, json={**SIGNER, "last_name": "Durand%0D%0ABcc: a@b.c"})
        assert encoded.status_code == 422
        extra = await client.post(url, json={**SIGNER, "is_admin": True})
        assert extra.status_code == 422
        wrong_locale = await client.post(url, json={**SIGNER, "locale": "de", "action": "tweet"})
        assert {e["field"] for e in wrong_locale.json()["errors"]} == {"locale", "action"}
        not_json = await client.post(url, content=b"{oops", headers={"content-type": "application/json"})
        assert not_json.status_code == 422

        metrics = (await client.get("/metrics")).text

    assert await read_topic(infra.kafka, topics.signatures) == []
    assert metric(metrics, "clameur_intake_rejections_total", reason="unknown_case") == 1
    assert metric(metrics, "clameur_intake_rejections_total", reason="closed_case") == 2
    assert metric(metrics, "clameur_intake_rejections_total", reason="too_large") == 2
    assert metric(metrics, "clameur_intake_rejections_total", reason="unsupported_media") == 2
    assert metric(metrics, "clameur_intake_rejections_total", reason="validation") == 5
    assert metric(metrics, "clameur_intake_produce_attempts_total") == 0


async def test_the_honeypot_looks_accepted_but_publishes_nothing(
    intake: Intake, infra: Infra, topics: Topics, nawal: str
) -> None:
    async with intake() as (_, client):
        bot = await client.post(f"/v1/cases/{nawal}/signatures", json=BOT)
        assert bot.status_code == 202
        assert bot.json()["status"] == "accepted"
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "clameur_intake_rejections_total", reason="honeypot") == 1
    assert await read_topic(infra.kafka, topics.signatures) == []


async def test_the_honeypot_on_a_confirmation_case_looks_pending_and_writes_no_contact(
    intake: Intake, infra: Infra, topics: Topics, atena: str
) -> None:
    async with intake() as (_, client):
        bot = await client.post(f"/v1/cases/{atena}/signatures", json=BOT)
        person = await client.post(f"/v1/cases/{atena}/signatures", json=SIGNER)
    # A bot cannot tell its answer from a person's.
    assert bot.status_code == person.status_code == 202
    assert bot.json()["status"] == person.json()["status"] == "pending_confirmation"
    # Only the person's records: one signature, one contact (read after them, so none is late).
    assert len(await read_topic(infra.kafka, topics.signatures, at_least=1)) == 1
    assert len(await read_topic(infra.kafka, topics.contacts, at_least=1)) == 1


async def test_an_idempotent_retry_publishes_once(
    intake: Intake, infra: Infra, topics: Topics, nawal: str
) -> None:
    url = f"/v1/cases/{nawal}/signatures"
    async with intake() as (_, client):
        first = await client.post(url, json=SIGNER, headers={"Idempotency-Key": "retry-1"})
        retry = await client.post(url, json=SIGNER, headers={"Idempotency-Key": "retry-1"})
        assert first.status_code == retry.status_code == 202
        assert retry.json()["signature_id"] == first.json()["signature_id"]
        assert retry.headers["idempotent-replayed"] == "true"

        racing = await asyncio.gather(
            *(client.post(url, json=SIGNER, headers={"Idempotency-Key": "race-1"}) for _ in range(8))
        )
        assert {answer.status_code for answer in racing} == {202}
        assert len({answer.json()["signature_id"] for answer in racing}) == 1

        other = await client.post(url, json=SIGNER, headers={"Idempotency-Key": "retry-2"})
        assert other.json()["signature_id"] != first.json()["signature_id"]

    records = await read_topic(infra.kafka, topics.signatures, at_least=3)
    await asyncio.sleep(0.5)
    records = await read_topic(infra.kafka, topics.signatures, at_least=4, within=2)
    assert len(records) == 3


async def test_rate_limits_per_client_ip(intake: Intake, nawal: str) -> None:
    url = f"/v1/cases/{nawal}/signatures"
    async with intake(rate_limit_ip_burst=3, rate_limit_ip_per_second=0.1, trusted_proxies=["127.0.0.1"]) as (
        _,
        client,
    ):
        answers = [
            await client.post(
                url, json={**SIGNER, "email": f"s{n}@example.org"}, headers=_from("203.0.113.9")
            )
            for n in range(4)
        ]
        assert [answer.status_code for answer in answers] == [202, 202, 202, 429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert answers[-1].headers["content-type"] == "application/problem+json"
        # Another client behind the same trusted proxy is not affected.
        elsewhere = await client.post(url, json=SIGNER, headers=_from("198.51.100.7"))
        assert elsewhere.status_code == 202
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "clameur_intake_rejections_total", reason="rate_limit") == 1


async def test_a_forged_repeated_forwarded_for_does_not_choose_the_bucket(intake: Intake, nawal: str) -> None:
    # The client writes a line of its own; the trusted proxy adds another with the real
    # peer.  Read first-line-only, each forged value would be a fresh bucket.
    url = f"/v1/cases/{nawal}/signatures"

    def forged(fake: str, real: str) -> list[tuple[str, str]]:
        return [("X-Forwarded-For", fake), ("X-Forwarded-For", real)]

    async with intake(rate_limit_ip_burst=1, rate_limit_ip_per_second=0.1, trusted_proxies=["127.0.0.1"]) as (
        _,
        client,
    ):
        first = await client.post(url, json=SIGNER, headers=forged("192.0.2.1", "203.0.113.9"))
        second = await client.post(url, json=SIGNER, headers=forged("192.0.2.2", "203.0.113.9"))
        # The same forged value from another real client is another bucket.
        other = await client.post(url, json=SIGNER, headers=forged("192.0.2.2", "198.51.100.7"))
    assert [first.status_code, second.status_code, other.status_code] == [202, 429, 202]


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(intake: Intake, nawal: str) -> None:
    url = f"/v1/cases/{nawal}/signatures"
    async with intake(rate_limit_ip_burst=1, rate_limit_ip_per_second=0.1) as (_, client):
        assert (await client.post(url, json=SIGNER, headers=_from("203.0.113.1"))).status_code == 202
        assert (await client.post(url, json=SIGNER, headers=_from("203.0.113.2"))).status_code == 429


async def test_rate_limits_per_email_domain(intake: Intake, nawal: str) -> None:
    url = f"/v1/cases/{nawal}/signatures"
    async with intake(
        rate_limit_domain_burst=2, rate_limit_domain_per_second=0.1, trusted_proxies=["127.0.0.1"]
    ) as (_, client):
        statuses = [
            (
                await client.post(
                    url,
                    json={**SIGNER, "email": f"bot{n}@throwaway.example"},
                    headers=_from(f"203.0.113.{n}"),
                )
            ).status_code
            for n in range(3)
        ]
        assert statuses == [202, 202, 429]
        assert (await client.post(url, json=SIGNER, headers=_from("203.0.113.50"))).status_code == 202
        exempt = [
            (await client.post(url, json={**SIGNER, "email": f"fan{n}@gmail.com"})).status_code
            for n in range(4)
        ]
        assert exempt == [202] * 4


async def test_cors_answers_only_the_origins_of_a_widget_key(intake: Intake, nawal: str) -> None:
    site, other = "https://free-nawal.example", "https://evil.example"
    url = f"/v1/cases/{nawal}/signatures"
    async with intake(widget_keys={"pk_nawal": [site], "pk_press": ["https://press.example"]}) as (_, client):
        preflight = await client.options(
            url,
            headers={
                "Origin": site,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-clameur-widget",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == site
        assert "X-Clameur-Widget" in preflight.headers["access-control-allow-headers"]
        assert "POST" in preflight.headers["access-control-allow-methods"]

        refused = await client.options(
            url, headers={"Origin": other, "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        wrong_key = await client.options(
            f"{url}?widget_key=pk_press", headers={"Origin": site, "Access-Control-Request-Method": "POST"}
        )
        assert wrong_key.status_code == 403

        signed = await client.post(url, json=SIGNER, headers={"Origin": site, "X-Clameur-Widget": "pk_nawal"})
        assert signed.status_code == 202
        assert signed.headers["access-control-allow-origin"] == site
        assert signed.headers["vary"] == "Origin"
        by_query = await client.post(f"{url}?widget_key=pk_nawal", json=SIGNER, headers={"Origin": site})
        assert by_query.status_code == 202

        # Errors are readable by the allowed site too, so the widget can show them.
        invalid = await client.post(
            url, json={**SIGNER, "country": "XX"}, headers={"Origin": site, "X-Clameur-Widget": "pk_nawal"}
        )
        assert invalid.status_code == 422
        assert invalid.headers["access-control-allow-origin"] == site

        stolen = await client.post(
            url, json=SIGNER, headers={"Origin": other, "X-Clameur-Widget": "pk_nawal"}
        )
        assert stolen.status_code == 403
        assert "access-control-allow-origin" not in stolen.headers
        keyless = await client.post(url, json=SIGNER, headers={"Origin": site})
        assert keyless.status_code == 403
        unknown = await client.post(url, json=SIGNER, headers={"X-Clameur-Widget": "pk_nope"})
        assert unknown.status_code == 403
        server = await client.post(url, json=SIGNER)
        assert server.status_code == 202
        metrics = (await client.get("/metrics")).text
    assert metric(metrics, "clameur_intake_rejections_total", reason="widget_key") == 5


async def test_operations_endpoints_and_openapi(intake: Intake, nawal: str) -> None:
    async with intake() as (_, client):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        await client.post(f"/v1/cases/{nawal}/signatures", json=SIGNER)
        metrics = (await client.get("/metrics")).text
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    for name in (
        "clameur_http_requests_total",
        "clameur_http_request_duration_seconds_bucket",
        "clameur_intake_signatures_accepted_total",
        "clameur_intake_rejections_total",
        "clameur_intake_produce_attempts_total",
        "clameur_intake_produce_errors_total",
        "clameur_intake_produce_duration_seconds_bucket",
        "clameur_intake_cases_known",
    ):
        assert f"\n{name}" in metrics, name
    assert 'route="/v1/cases/{case_id}/signatures"' in metrics
    assert docs.status_code == 200
    operation = schema["paths"]["/v1/cases/{case_id}/signatures"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert examples["signature"]["value"]["country"] == "FR"
    assert "SignatureForm" in schema["components"]["schemas"]
    assert {"202", "404", "410", "413", "415", "422", "429", "503"} <= set(operation["responses"])


async def test_not_ready_until_the_broker_answers(service_env: dict[str, str], nawal: str) -> None:
    from tests.intake.conftest import running, settings_for
    from tests.support import free_port

    settings = settings_for(service_env, kafka=f"127.0.0.1:{free_port()}")
    async with running(settings, wait_ready=False) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert set(not_ready.json()["checks"]) == {"cases", "broker"}
        assert "broker" in not_ready.json()["down"]
        # The client's error names the unreachable address; the answer does not.
        assert settings.kafka not in not_ready.text and "Error" not in not_ready.text
        early = await client.post(f"/v1/cases/{nawal}/signatures", json=SIGNER)
        assert early.status_code == 503
        assert early.headers["retry-after"]


def _from(address: str) -> dict[str, Any]:
    return {"X-Forwarded-For": address}
