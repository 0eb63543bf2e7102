"""Admission control: past its bounds a process refuses at once, and stays fast for those it took.

A surge beyond capacity must not become a queue that every request waits in until its
client gives up.  Each lane (a group of routes: intake's signatures, tally's reads, its
live streams, notify's pages) bounds the requests it holds in flight; and every lane
holds only a quarter of that while the event loop is late, because in a single-threaded
asyncio server that lateness is how long a request that just arrived waits before its
work starts.
Past either bound the answer is a 503 with a jittered integer ``Retry-After`` and a
problem body saying the campaign is busy, sent before the body is read, before routing,
before anything that costs (no parsing, no broker).  Paths outside every lane (health,
readiness, metrics) are never refused.

Why not uvicorn's ``--limit-concurrency``: it counts open connections as well as tasks,
so a thousand idle keep-alive connections refuse everyone, and its 503 has no
``Retry-After`` nor a body a person can read.  ``--backlog`` only bounds the kernel's
accept queue, a wait no request can see the end of.

Everything is injected: the lanes, the clock and the lag measure, the randomness of the
jitter, the metrics.  :class:`AdmissionControl` is a pure ASGI middleware, mounted
outermost so a refusal costs a lane lookup, two comparisons and one ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clameur.settings import ClameurSettings
from clameur.web import PROBLEM_JSON

BUSY_TYPE = "https://clameur.example/problems/busy"

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Lane:
    """A group of routes with its own bound: at most ``max_in_flight`` requests held at once.

    ``max_in_flight`` 0 means unbounded (the event loop's lag still applies).  For a
    long-lived stream (Server-Sent Events) the bound is a cap on open streams.  ``busy``
    is what the refusal's ``detail`` tells a person.  With ``cors`` the refusal echoes the
    request's ``Origin`` and exposes ``Retry-After``, so a widget on another site can read it.
    """

    name: str
    max_in_flight: int
    busy: str
    cors: bool = False


@dataclass(frozen=True)
class Rule:
    """Requests whose method is in ``methods`` and whose path starts with ``prefix`` and ends
    with ``suffix`` (and does not end with any of ``not_suffixes``) belong to ``lane``."""

    lane: Lane
    methods: frozenset[str]
    prefix: str
    suffix: str = ""
    not_suffixes: tuple[str, ...] = ()

    def matches(self, method: str, path: str) -> bool:
        return (
            method in self.methods
            and path.startswith(self.prefix)
            and path.endswith(self.suffix)
            and not any(path.endswith(other) for other in self.not_suffixes)
        )


@dataclass(frozen=True)
class RetryAfter:
    """``Retry-After`` in whole seconds (HTTP allows no fraction), drawn for each refusal from
    ``low`` to ``high`` so that the refused do not all come back in the same second."""

    low: int = 1
    high: int = 5
    random: Callable[[int, int], int] = field(default=random.randint, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"Retry-After bounds must be 1 <= low <= high, not {self.low}..{self.high}")

    def seconds(self) -> int:
        return self.random(self.low, self.high)


class LoopLag:
    """How late the event loop runs: a request that arrives now waits about this long.

    A ticker sleeps ``interval_s`` again and again; what it overslept is the time a ready
    callback waited for its turn.  :meth:`current` is the smaller of the last two samples
    (one long step, a bulk import's validation, then an idle loop, is no crowd), or, while
    the tick is overdue, how overdue it is: in an overloaded loop one iteration runs the
    callbacks of hundreds of requests, and those late in it see the lateness before the
    tick does.  Started lazily by the first request, stopped by the app's shutdown.
    """

    def __init__(
        self,
        *,
        interval_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._observe = observe
        self._last = 0.0
        self._sustained = 0.0
        self._due = float("inf")
        self._task: asyncio.Task[None] | None = None

    def current(self) -> float:
        return max(self._sustained, self._clock() - self._due)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick(self) -> None:
        while True:
            started = self._clock()
            self._due = started + self.interval_s
            await asyncio.sleep(self.interval_s)
            sample = max(0.0, self._clock() - self._due)
            self._due = float("inf")
            self._sustained, self._last = min(sample, self._last), sample
            if self._observe is not None:
                self._observe(sample)


class _LaneState:
    __slots__ = ("admitted", "body", "in_flight", "lane", "late_bound", "refused")

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.late_bound = max(1, lane.max_in_flight // 4) if lane.max_in_flight else 0
        self.in_flight = 0
        self.admitted = 0
        self.refused = 0
        self.body = orjson.dumps(
            {
                "type": BUSY_TYPE,
                "title": "Campaign busy",
                "status": 503,
                "detail": lane.busy,
                "reason": "overloaded",
            }
        )


class Admission:
    """The lanes of one service, their counts, and the bound on the loop's lag.

    ``max_wait_s`` 0 turns the lag bound off; ``enabled=False`` turns every bound off (the
    counts are still kept: the benchmark's "bounds off" side).
    """

    def __init__(
        self,
        service: str,
        rules: Sequence[Rule],
        *,
        max_wait_s: float,
        retry_after: RetryAfter,
        lag: LoopLag,
        enabled: bool = True,
    ) -> None:
        self.service = service
        self.rules = tuple(rules)
        self.max_wait_s = max_wait_s if enabled else 0.0
        self.retry_after = retry_after
        self.lag = lag
        self.enabled = enabled
        self.lanes = {rule.lane.name: _LaneState(rule.lane) for rule in self.rules}

    def lane_of(self, method: str, path: str) -> _LaneState | None:
        for rule in self.rules:
            if rule.matches(method, path):
                return self.lanes[rule.lane.name]
        return None

    def admits(self, state: _LaneState) -> bool:
        """Whether a request of this lane may start now (counted either way).

        A late loop lowers a lane's bound to a quarter (at least 1), never to nothing: the
        lag a crowd of refusals or a neighbour's CPU causes must not starve the work that
        still fits (measured: refusing everything while late kept 2% of capacity at 4x).
        """
        if not self.enabled:
            state.admitted += 1
            return True
        bound = state.lane.max_in_flight
        if bound and state.in_flight >= bound:
            state.refused += 1
            return False
        if self.max_wait_s and state.in_flight >= state.late_bound and self.lag.current() > self.max_wait_s:
            state.refused += 1
            return False
        state.admitted += 1
        return True


class AdmissionControl:
    """Pure ASGI middleware: refuse past the bounds of :class:`Admission`, pass the rest."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._stopping_lag(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admission = self.admission
        admission.lag.start()
        state = admission.lane_of(scope["method"], scope["path"])
        if state is None:
            await self.app(scope, receive, send)
            return
        if not admission.admits(state):
            await self._refuse(state, scope, send)
            return
        state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1

    def _stopping_lag(self, receive: Receive) -> Receive:
        async def receive_and_stop() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.admission.lag.stop()
            return message

        return receive_and_stop

    async def _refuse(self, state: _LaneState, scope: Scope, send: Send) -> None:
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(state.body)).encode()),
            (b"retry-after", str(self.admission.retry_after.seconds()).encode()),
            (b"cache-control", b"no-store"),
        ]
        if state.lane.cors:
            headers.extend(_cors(scope))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": state.body})


def _cors(scope: Scope) -> Iterator[tuple[bytes, bytes]]:
    for name, value in scope["headers"]:
        if name == b"origin":
            yield b"access-control-allow-origin", value
            yield b"access-control-expose-headers", b"Retry-After"
            yield b"vary", b"Origin"
            return


class AdmissionMetrics(Collector):
    """Requests admitted and refused by lane, in flight, the bounds, and the loop's lag.

    The counts are plain integers kept by :class:`Admission` and read at scrape time: the
    hot path (and above all a refusal) takes no metric lock.
    """

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self._admissions: list[Admission] = []
        lag = Histogram(
            "clameur_admission_loop_lag_seconds",
            "How late the event loop runs: the wait of a request before its work starts.",
            ["service"],
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.observe_lag = lag.labels(service).observe
        registry.register(self)

    def watch(self, admission: Admission) -> Admission:
        self._admissions.append(admission)
        return admission

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "clameur_admission_requests",
            "Requests of a bounded lane, admitted or refused for load (503).",
            labels=["service", "lane", "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "clameur_admission_in_flight", "Requests of a lane being served now.", labels=["service", "lane"]
        )
        limit = GaugeMetricFamily(
            "clameur_admission_in_flight_limit",
            "The lane's bound on requests in flight (0: unbounded).",
            labels=["service", "lane"],
        )
        for admission in self._admissions:
            for name, state in admission.lanes.items():
                requests.add_metric([self.service, name, "admitted"], state.admitted)
                requests.add_metric([self.service, name, "refused"], state.refused)
                in_flight.add_metric([self.service, name], state.in_flight)
                limit.add_metric([self.service, name], state.lane.max_in_flight if admission.enabled else 0)
        yield from (requests, in_flight, limit)


def install_admission(
    app: Starlette,
    registry: CollectorRegistry,
    service: str,
    settings: ClameurSettings,
    rules: Sequence[Rule],
) -> Admission:
    """Mount :class:`AdmissionControl` on ``app`` with the shared settings (``CLAMEUR_ADMISSION_*``).

    Call it after every other ``add_middleware``: the last added is the outermost, and a
    refusal should cost nothing the other middlewares would add.
    """
    metrics = AdmissionMetrics(registry, service)
    low, high = settings.admission_retry_after_s
    admission = Admission(
        service,
        rules,
        max_wait_s=settings.admission_max_wait_s,
        retry_after=RetryAfter(low, max(low, high)),
        lag=LoopLag(observe=metrics.observe_lag),
        enabled=settings.admission_enabled,
    )
    metrics.watch(admission)
    app.add_middleware(AdmissionControl, admission=admission)
    app.state.admission = admission  # for tests that look inside
    return admission
