"""Admission control on a small app: the bounds refuse at once, the admitted finish, health never waits.

Requests are held in flight by their own bodies: the app reads the body, and the client
sends it only when the test lets it, so "the bound is reached" is a fact the test sees
(the in-flight gauge) before it checks a single 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clameur.admission import Admission, AdmissionControl, AdmissionMetrics, Lane, LoopLag, RetryAfter, Rule
from tests.support import eventually, metric

SIGN = Lane("signatures", 3, "The campaign is busy; retry.", cors=True)
BULK = Lane("bulk", 1, "Too many bulk imports; retry.")
RULES = (
    Rule(SIGN, frozenset({"POST"}), "/v1/cases/", "/signatures"),
    Rule(BULK, frozenset({"POST"}), "/v1/cases/", "/signatures/batch"),
)


@dataclass
class FakeLag:
    """A lag that the test sets, in place of the event loop's."""

    value: float = 0.0
    started: int = field(default=0)

    def current(self) -> float:
        return self.value

    def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        pass


async def _sign(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"received": len(body)}, status_code=202)


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _small_app(
    lag: LoopLag | FakeLag, *, max_wait_s: float = 0.05, enabled: bool = True
) -> tuple[AdmissionControl, CollectorRegistry, Admission]:
    registry = CollectorRegistry()
    metrics = AdmissionMetrics(registry, "intake")
    admission = Admission(
        "intake",
        RULES,
        max_wait_s=max_wait_s,
        retry_after=RetryAfter(1, 5),
        lag=lag,  # type: ignore[arg-type]  # FakeLag has LoopLag's interface
        enabled=enabled,
    )
    metrics.watch(admission)
    inner = Starlette(
        routes=[
            Route("/v1/cases/{case_id}/signatures", _sign, methods=["POST"]),
            Route("/v1/cases/{case_id}/signatures/batch", _sign, methods=["POST"]),
            Route("/healthz", _healthz),
        ]
    )
    return AdmissionControl(inner, admission), registry, admission


async def _held_body(gate: asyncio.Event) -> AsyncIterator[bytes]:
    await gate.wait()
    yield b'{"first_name": "Camille"}'


async def _until_in_flight(registry: CollectorRegistry, expected: int) -> None:
    async def reached() -> bool:
        scraped = generate_latest(registry).decode()
        return metric(scraped, "clameur_admission_in_flight", lane="signatures") == expected

    await eventually(reached, within=5, what=f"{expected} requests in flight")


async def test_past_the_bound_a_request_is_refused_at_once_and_the_admitted_complete() -> None:
    app, registry, _ = _small_app(FakeLag())
    gate = asyncio.Event()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake.test") as client:
        held = [
            asyncio.create_task(client.post("/v1/cases/nawal/signatures", content=_held_body(gate)))
            for _ in range(SIGN.max_in_flight)
        ]
        await _until_in_flight(registry, SIGN.max_in_flight)

        started = time.perf_counter()
        refused = await asyncio.gather(
            *(client.post("/v1/cases/nawal/signatures", json={"n": n}) for n in range(20))
        )
        refusing_took = time.perf_counter() - started
        health = await client.get("/healthz")
        gate.set()
        admitted = await asyncio.gather(*held)

    assert [answer.status_code for answer in admitted] == [202, 202, 202]
    assert {answer.status_code for answer in refused} == {503}
    assert refusing_took < 1.0  # none of them waited for the held ones
    assert health.status_code == 200
    for answer in refused:
        assert 1 <= int(answer.headers["retry-after"]) <= 5
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["status"] == 503
        assert problem["reason"] == "overloaded"
        assert "busy" in problem["detail"]
    assert len({answer.headers["retry-after"] for answer in refused}) > 1, "Retry-After is not spread"
    scraped = generate_latest(registry).decode()
    assert metric(scraped, "clameur_admission_requests_total", lane="signatures", outcome="admitted") == 3
    assert metric(scraped, "clameur_admission_requests_total", lane="signatures", outcome="refused") == 20
    assert metric(scraped, "clameur_admission_in_flight", lane="signatures") == 0
    assert metric(scraped, "clameur_admission_in_flight_limit", lane="signatures") == 3


async def test_a_refusal_reads_no_body() -> None:
    app, _, admission = _small_app(FakeLag())
    admission.lanes["signatures"].in_flight = SIGN.max_in_flight  # as if full
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        raise AssertionError("a refusal must not read the body")

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/cases/nawal/signatures", "headers": []}
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 503
    assert orjson.loads(sent[1]["body"])["reason"] == "overloaded"  # type: ignore[arg-type]


async def test_one_full_lane_does_not_refuse_another() -> None:
    app, _, admission = _small_app(FakeLag())
    admission.lanes["bulk"].in_flight = BULK.max_in_flight
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake.test") as client:
        bulk = await client.post("/v1/cases/nawal/signatures/batch", json=[])
        widget = await client.post("/v1/cases/nawal/signatures", json={})
    assert bulk.status_code == 503
    assert widget.status_code == 202


async def test_a_late_event_loop_lowers_every_lane_to_a_quarter_but_never_refuses_health() -> None:
    lag = FakeLag(value=0.2)
    app, _, admission = _small_app(lag, max_wait_s=0.05)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake.test") as client:
        first = await client.post("/v1/cases/nawal/signatures", json={})  # an idle lane still works
        admission.lanes["signatures"].in_flight = 1  # a quarter of 3, at least 1: reached
        admission.lanes["bulk"].in_flight = 0
        late = await client.post("/v1/cases/nawal/signatures", json={})
        bulk = await client.post("/v1/cases/nawal/signatures/batch", json=[])
        health = await client.get("/healthz")
        lag.value = 0.01
        on_time = await client.post("/v1/cases/nawal/signatures", json={})
    assert first.status_code == 202
    assert late.status_code == 503
    assert bulk.status_code == 202
    assert health.status_code == 200
    assert on_time.status_code == 202
    assert lag.started >= 1


async def test_bounds_off_admit_everything_and_still_count() -> None:
    app, registry, admission = _small_app(FakeLag(value=1.0), enabled=False)
    admission.lanes["signatures"].in_flight = 100
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake.test") as client:
        answer = await client.post("/v1/cases/nawal/signatures", json={})
    assert answer.status_code == 202
    scraped = generate_latest(registry).decode()
    assert metric(scraped, "clameur_admission_requests_total", lane="signatures", outcome="admitted") == 1
    assert metric(scraped, "clameur_admission_in_flight_limit", lane="signatures") == 0


async def test_a_refusal_a_browser_sent_carries_cors_headers_it_can_read() -> None:
    app, _, admission = _small_app(FakeLag())
    admission.lanes["signatures"].in_flight = SIGN.max_in_flight
    admission.lanes["bulk"].in_flight = BULK.max_in_flight
    origin = {"Origin": "https://free-nawal.example"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake.test") as client:
        widget = await client.post("/v1/cases/nawal/signatures", json={}, headers=origin)
        bulk = await client.post("/v1/cases/nawal/signatures/batch", json=[], headers=origin)
    assert widget.headers["access-control-allow-origin"] == "https://free-nawal.example"
    assert "Retry-After" in widget.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in bulk.headers  # partners call from servers


async def test_the_loop_lag_sees_a_blocked_loop() -> None:
    registry = CollectorRegistry()
    metrics = AdmissionMetrics(registry, "intake")
    lag = LoopLag(interval_s=0.005, observe=metrics.observe_lag)
    lag.start()
    try:
        await asyncio.sleep(0.02)
        assert lag.current() < 0.05
        time.sleep(0.1)  # noqa: ASYNC251 - the point: the loop is blocked, as by a CPU-bound crowd
        assert lag.current() >= 0.09  # seen while the tick is overdue
        await asyncio.sleep(0.001)
        assert lag.current() < 0.05  # one long step is no crowd
        time.sleep(0.1)  # noqa: ASYNC251 - and again: the loop stays late
        await asyncio.sleep(0.001)
        assert lag.current() >= 0.09  # sustained: both samples late
    finally:
        await lag.stop()
    scraped = generate_latest(registry).decode()
    assert metric(scraped, "clameur_admission_loop_lag_seconds_count") >= 3
    assert metric(scraped, "clameur_admission_loop_lag_seconds_bucket", le="0.25") >= 1


@pytest.mark.parametrize(("low", "high"), [(0, 3), (4, 2)])
def test_retry_after_bounds_are_checked(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="Retry-After"):
        RetryAfter(low, high)
