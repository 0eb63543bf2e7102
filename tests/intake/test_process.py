"""``python -m intake`` as operators run it: SIGTERM drains, and the OpenAPI fuzzed for 5xx."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from clameur.events import decode_signature
from clameur.topics import Topics
from tests.conftest import Infra
from tests.intake.conftest import SIGNER, case_state, publish_cases
from tests.support import ServiceProcess, read_topic

PARTNER_KEY = "partner-key-fuzz-0123456789"


@pytest.mark.slow
async def test_sigterm_finishes_requests_in_flight_and_flushes(
    service_env: dict[str, str], infra: Infra, topics: Topics, new_id: Callable[[str], str], tmp_path: Path
) -> None:
    case_id = new_id("nawal")
    await publish_cases(infra.kafka, topics, case_state(case_id))
    # A long linger keeps requests waiting for their ack when SIGTERM comes.
    env = {**service_env, "CLAMEUR_PRODUCER_LINGER_MS": "80", "CLAMEUR_RATE_LIMIT_IP_BURST": "0"}
    intake = ServiceProcess("intake", env, tmp_path)
    await asyncio.to_thread(intake.start)
    try:
        async with httpx.AsyncClient(base_url=intake.url, timeout=10) as client:
            url = f"/v1/cases/{case_id}/signatures"
            warm = await client.post(url, json=SIGNER)
            assert warm.status_code == 202
            posts = [asyncio.create_task(client.post(url, json=SIGNER)) for _ in range(30)]
            await asyncio.sleep(0.03)
            code = await asyncio.to_thread(intake.kill, signal.SIGTERM)
            answers = await asyncio.gather(*posts, return_exceptions=True)
    finally:
        intake.kill()
    assert code == 0, intake.tail()
    accepted = {warm.json()["signature_id"]} | {
        answer.json()["signature_id"]
        for answer in answers
        if isinstance(answer, httpx.Response) and answer.status_code == 202
    }
    statuses = [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
    assert len(accepted) > 1, statuses
    # After SIGTERM a request is answered (202, or 503 if the broker was slow) or refused
    # at the socket; never a 5xx crash or a 202 that is not on the topic.
    assert all(
        a.status_code in (202, 503) if isinstance(a, httpx.Response) else isinstance(a, httpx.TransportError)
        for a in answers
    ), statuses
    records = await read_topic(infra.kafka, topics.signatures, at_least=len(accepted), within=15)
    assert accepted <= {str(decode_signature(record.value).signature_id) for record in records}
    assert "Durand" not in intake.tail(200) and "camille" not in intake.tail(200).lower()


def test_fuzzing_the_openapi_finds_no_server_error(
    service_env: dict[str, str], infra: Infra, topics: Topics, new_id: Callable[[str], str], tmp_path: Path
) -> None:
    case_id = new_id("nawal")
    asyncio.run(publish_cases(infra.kafka, topics, case_state(case_id)))
    env = {
        **service_env,
        "CLAMEUR_RATE_LIMIT_IP_BURST": "0",
        "CLAMEUR_PARTNER_KEYS": f'{{"{PARTNER_KEY}": "fuzz"}}',
        "CLAMEUR_WIDGET_KEYS": '{"pk_fuzz": ["https://fuzz.example"]}',
    }
    intake = ServiceProcess("intake", env, tmp_path).start()
    try:
        schema = schemathesis.openapi.from_url(f"{intake.url}/openapi.json")
        strategies = []
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                # The seeded case half of the time, so bodies reach validation and the broker.
                strategies.append(
                    operation.as_strategy(
                        generation_mode=mode,
                        path_parameters={"case_id": case_id},
                        headers={"Authorization": f"Bearer {PARTNER_KEY}"},
                    )
                )
                strategies.append(operation.as_strategy(generation_mode=mode))
        seen: list[int] = []

        @settings(
            max_examples=300,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=st.one_of(strategies))
        def no_server_error(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            response = case.call(base_url=intake.url, timeout=10)
            seen.append(response.status_code)
            assert response.status_code < 500, (response.status_code, response.text, case.as_curl_command())

        no_server_error()
    finally:
        assert intake.stop() == 0, intake.tail()
    assert 202 in seen and 422 in seen, sorted(set(seen))
