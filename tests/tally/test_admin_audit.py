"""Every admin action of tally is one log line and a count; wrong tokens are counted and slowed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tally.settings import TallySettings

from tests.support import metric
from tests.tally.helpers import ADMIN, case_body

VICTORY = {"headline": {"fr": "Nawal est libre !", "en": "Nawal is free!"}, "message": {"fr": "Merci."}}


def _audited(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    lines = [record for record in caplog.records if record.getMessage() == "admin action"]
    for line in lines:
        at = datetime.fromisoformat(line.__dict__["at"])
        assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)
    return [(line.__dict__["action"], line.__dict__["target"], line.__dict__["token_name"]) for line in lines]


async def test_each_case_action_is_logged_and_counted_once(
    tally: Any, tally_settings: TallySettings, new_id: Any, caplog: pytest.LogCaptureFixture
) -> None:
    won, closed = new_id("nawal"), new_id("atena")
    with caplog.at_level(logging.INFO, logger="clameur.admin"):
        async with tally(tally_settings) as (_, client):
            for case_id in (won, closed):
                assert (
                    await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
                ).is_success
            edited = await client.patch(f"/v1/admin/cases/{won}", json={"goal": 600_000}, headers=ADMIN)
            assert edited.status_code == 200
            assert (
                await client.post(f"/v1/admin/cases/{won}/victory", json=VICTORY, headers=ADMIN)
            ).is_success
            assert (await client.post(f"/v1/admin/cases/{closed}/close", headers=ADMIN)).is_success
            # Refused changes are no actions: nothing logged, nothing counted.
            again = await client.post("/v1/admin/cases", json=case_body(won), headers=ADMIN)
            late = await client.post(f"/v1/admin/cases/{closed}/victory", json=VICTORY, headers=ADMIN)
            assert (again.status_code, late.status_code) == (409, 409)
            scraped = (await client.get("/metrics")).text

    assert _audited(caplog) == [
        ("case_created", won, "admin"),
        ("case_created", closed, "admin"),
        ("case_changed", won, "admin"),
        ("victory_declared", won, "admin"),
        ("case_closed", closed, "admin"),
    ]
    counts = {
        action: metric(scraped, "clameur_admin_actions_total", service="tally", action=action)
        for action in (
            "case_created",
            "case_changed",
            "victory_declared",
            "case_closed",
            "invalidation_created",
        )
    }
    assert counts == {
        "case_created": 2,
        "case_changed": 1,
        "victory_declared": 1,
        "case_closed": 1,
        "invalidation_created": 0,
    }
    assert 'clameur_admin_actions_total{action="invalidation_revoked",service="tally"} 0.0' in scraped


async def test_wrong_tokens_are_counted_then_the_address_waits_whatever_it_sends(
    tally: Any, tally_settings: TallySettings, new_id: Any
) -> None:
    body = case_body(new_id("nawal"))
    wrong = {"Authorization": "Bearer guess"}
    async with tally(tally_settings) as (app, client):
        answers = [await client.post("/v1/admin/cases", json=body, headers=wrong) for _ in range(11)]
        assert [answer.status_code for answer in answers] == [401] * 10 + [429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert answers[-1].headers["content-type"] == "application/problem+json"
        # Locked out, even the right token waits: a right guess looks like a wrong one.
        assert (await client.post("/v1/admin/cases", json=body, headers=ADMIN)).status_code == 429
        # Another address is not affected.
        elsewhere = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
        async with httpx.AsyncClient(transport=elsewhere, base_url="http://tally") as operator:
            assert (await operator.post("/v1/admin/cases", json=body, headers=ADMIN)).status_code == 201
        scraped = (await client.get("/metrics")).text
    assert metric(scraped, "clameur_admin_auth_failures_total", service="tally") == 10
