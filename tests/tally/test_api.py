"""The HTTP contract: admin auth and errors, public reads with ETag, CORS, readiness."""

from __future__ import annotations

from typing import Any

from tally.settings import TallySettings

from tests.tally.helpers import ADMIN, case_body

PROBLEM = "application/problem+json"


async def test_the_admin_api_wants_the_right_bearer_token(
    tally: Any, tally_settings: TallySettings, new_id: Any
) -> None:
    async with tally(tally_settings) as (_, client):
        body = case_body(new_id("nawal"))
        missing = await client.post("/v1/admin/cases", json=body)
        wrong = await client.post("/v1/admin/cases", json=body, headers={"Authorization": "Bearer nope"})
        basic = await client.post("/v1/admin/cases", json=body, headers={"Authorization": "Basic eDp5"})
        # A wrong token gets the answer a missing one gets: nothing tells them apart.
        assert (missing.status_code, wrong.status_code, basic.status_code) == (401, 401, 401)
        for refused in (missing, wrong, basic):
            assert refused.headers["content-type"] == PROBLEM
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert wrong.json() == missing.json()
        assert (await client.get(f"/v1/cases/{body['id']}")).status_code == 404  # nothing was created


async def test_create_edit_win_and_the_errors_on_the_way(
    tally: Any, tally_settings: TallySettings, new_id: Any
) -> None:
    case_id = new_id("nawal")
    async with tally(tally_settings) as (_, client):
        created = await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        assert created.status_code == 201, created.text
        assert created.json()["version"] == 1 and created.headers["location"] == f"/v1/cases/{case_id}"

        again = await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        assert again.status_code == 409 and again.headers["content-type"] == PROBLEM

        invalid = await client.post("/v1/admin/cases", json=case_body(new_id(), goal=-3), headers=ADMIN)
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "goal"
        inconsistent = await client.post(
            "/v1/admin/cases", json=case_body(new_id(), default_locale="de"), headers=ADMIN
        )
        assert inconsistent.status_code == 422 and inconsistent.headers["content-type"] == PROBLEM

        edited = await client.patch(f"/v1/admin/cases/{case_id}", json={"goal": 600_000}, headers=ADMIN)
        assert (
            edited.status_code == 200 and edited.json()["version"] == 2 and edited.json()["goal"] == 600_000
        )
        unknown = await client.patch(f"/v1/admin/cases/{new_id()}", json={"goal": 1}, headers=ADMIN)
        assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM

        victory = {
            "headline": {"fr": "Nawal est libre !", "en": "Nawal is free!"},
            "message": {"fr": "Merci."},
        }
        won = await client.post(f"/v1/admin/cases/{case_id}/victory", json=victory, headers=ADMIN)
        assert won.status_code == 200 and won.json()["status"] == "won" and won.json()["version"] == 3
        assert (
            await client.post(f"/v1/admin/cases/{case_id}/victory", json=victory, headers=ADMIN)
        ).status_code == 409
        assert (await client.post(f"/v1/admin/cases/{case_id}/close", headers=ADMIN)).status_code == 409

        public = (await client.get(f"/v1/cases/{case_id}")).json()
        assert public["status"] == "won" and public["victory"]["headline"]["en"] == "Nawal is free!"
        assert public["goal"] == 600_000 and public["total"] == 0

        other = new_id("closed")
        await client.post("/v1/admin/cases", json=case_body(other), headers=ADMIN)
        assert (await client.post(f"/v1/admin/cases/{other}/close", headers=ADMIN)).json()[
            "status"
        ] == "closed"
        late = await client.post(f"/v1/admin/cases/{other}/victory", json=victory, headers=ADMIN)
        assert late.status_code == 409 and "closed" in late.json()["detail"]


async def test_public_reads_are_cacheable_and_open_to_any_origin(
    tally: Any, tally_settings: TallySettings, new_id: Any
) -> None:
    case_id = new_id("nawal")
    async with tally(tally_settings) as (_, client):
        await client.post("/v1/admin/cases", json=case_body(case_id), headers=ADMIN)
        first = await client.get(f"/v1/cases/{case_id}", headers={"Origin": "https://campaign.example"})
        assert first.status_code == 200
        assert first.headers["access-control-allow-origin"] == "*"
        assert first.headers["cache-control"] == "public, max-age=2"
        etag = first.headers["etag"]
        assert etag.startswith('W/"')
        document = first.json()
        assert {
            "title",
            "status",
            "goal",
            "milestones",
            "total",
            "by_country",
            "by_action",
            "updated_at",
        } <= set(document)

        unchanged = await client.get(f"/v1/cases/{case_id}", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag

        await client.patch(f"/v1/admin/cases/{case_id}", json={"goal": 700_000}, headers=ADMIN)
        changed = await client.get(f"/v1/cases/{case_id}", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag

        listing = await client.get("/v1/cases")
        assert case_id in [case["id"] for case in listing.json()["cases"]]
        assert (
            await client.get("/v1/cases", headers={"If-None-Match": listing.headers["etag"]})
        ).status_code == 304

        preflight = await client.options(
            f"/v1/cases/{case_id}",
            headers={"Origin": "https://a.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"

        missing = await client.get(f"/v1/cases/{new_id()}")
        assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM


async def test_health_readiness_and_metrics(tally: Any, tally_settings: TallySettings) -> None:
    async with tally(tally_settings) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and set(ready.json()["checks"]) == {"kafka", "postgres"}
        metrics = (await client.get("/metrics")).text
        for name in (
            "clameur_tally_records_consumed_total",
            "clameur_tally_batch_apply_duration_seconds",
            "clameur_tally_accept_to_counted_seconds",
            "clameur_outbox_pending_events",
            "clameur_outbox_publish_attempts_total",
        ):
            assert name in metrics
