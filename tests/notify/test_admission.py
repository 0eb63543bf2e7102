"""Notify's pages are a bounded lane: full, they refuse at once; health and the admin API never."""

from __future__ import annotations

import httpx
from notify.app import create_app
from notify.settings import NotifySettings

from clameur.admission import Admission
from tests.support import metric, settings_from


async def test_a_crowd_on_the_pages_is_refused_at_once_and_health_stays_up(
    notify_env: dict[str, str],
) -> None:
    app = create_app(settings_from(NotifySettings, notify_env, notify_pages_max_in_flight=2))
    admission: Admission = app.state.admission
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://clameur.example.org") as client:
        admitted = await client.get("/v1/unsubscribe/not-a-token")
        admission.lanes["pages"].in_flight = 2  # two supporters' pages being served
        refused = [
            await client.request(method, path)
            for method, path in (
                ("GET", "/v1/unsubscribe/not-a-token"),
                ("POST", "/v1/unsubscribe/not-a-token"),
                ("GET", "/v1/confirm/not-a-token"),
                ("POST", "/v1/reject/not-a-token"),
            )
        ]
        health = await client.get("/healthz")
        admin = await client.post("/v1/admin/supporters/erase", json={})
        metrics = await client.get("/metrics")

    assert admitted.status_code == 400  # a forged token: the page ran
    assert [answer.status_code for answer in refused] == [503] * 4
    assert all(1 <= int(answer.headers["retry-after"]) <= 5 for answer in refused)
    assert "link still works" in refused[0].json()["detail"]
    assert health.status_code == 200
    assert admin.status_code == 401  # the admin API is not in the lane: its guard answered
    assert metric(metrics.text, "clameur_admission_requests_total", lane="pages", outcome="refused") == 4
