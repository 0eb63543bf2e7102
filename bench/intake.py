"""``make bench-intake``: intake's sustained rate and latency, its bulk rate, against a bare reference.

    python -m bench.intake [--duration 30] [--connections 64] [--workers 2] [--baseline-rev 46d361b]

1. Kafka and Postgres of the dev stack (started if needed); two cases, each with its
   own topics: one without confirmation (like for like: a contact only for the ~25% who
   consent, the data round 1 carried too) and one that confirms addresses (every
   signature also writes a contact: the worst case).
2. An intake per case on a free port, served by ``uvicorn --factory
   intake.app:app_from_environment --workers N`` (``python -m intake`` has no workers
   setting), trusting ``X-Forwarded-For`` from 127.0.0.1 so each request comes from a
   random client IP and the default rate limits stay on without refusing legitimate
   unique traffic.
3. wrk (``bench/wrk/signatures.lua``, unique signatures) at 64 connections for
   ``--duration`` on each case: the maximum sustained rate; then, on the confirmation
   case, paced at 80% of it (the latency a surge below saturation sees) and partners'
   bulk import (1,000 signatures a request).
4. The bare FastAPI reference (``bench/reference_app.py``) on the same uvicorn setup,
   the same wrk: the ratio (the goal applies like for like).
5. With ``--baseline-rev REV``: that revision's intake (checked out under
   ``.cache/bench/``, its own locked virtualenv, its own topics) on the same uvicorn setup,
   the same cases and the same wrk load, taking turns with today's: accepted/s and the
   ratio on each case.  Like for like is the cost of protection (issue 14's "at most
   10%", the goal); the confirmation case adds a contact per signature and is shown beside.
6. Exactness, for each case: every 202 the clients received is a record on its
   signatures topic, every record the producer had acknowledged is on the topics, and on
   the confirmation case every signature has its contact on contacts.v1 (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import secrets
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from bench.baseline import Baseline, prepare
from bench.common import (
    Child,
    MachineFacts,
    Row,
    Samples,
    WrkResult,
    by_label,
    count,
    free_port,
    listener_pid,
    millis,
    per_second,
    report,
    run_wrk,
    say,
    scrape_workers,
    summed,
    total,
    tree_cpu_seconds,
    uvicorn_argv,
    wait_until,
)
from bench.infra import (
    BenchRun,
    Infrastructure,
    add_run_arguments,
    bench_case,
    create_topics,
    delete_topic_names,
    delete_topics,
    end_offsets,
    publish_events,
    run_measured,
    service_env,
)
from bench.synthetic import COUNTRIES, FIRST_NAMES, LAST_NAMES
from clameur.events import CaseState
from clameur.topics import Topics

INTAKE_FACTORY = "intake.app:app_from_environment"
REFERENCE_FACTORY = "bench.reference_app:create_app"
PARTNER = "bench-partner"

GOAL_RATE = 5_000.0
GOAL_RATIO = 0.6
GOAL_PACED_P99_S = 0.050
GOAL_BULK_RATE = 50_000.0
GOAL_BASELINE_RATIO = 0.9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measured wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers, for intake and reference")
    parser.add_argument("--pace", type=float, default=0.8, help="the paced run's share of the maximum")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    parser.add_argument("--bulk-duration", type=float, default=15.0)
    parser.add_argument("--bulk-connections", type=int, default=8)
    parser.add_argument("--bulk-size", type=int, default=1000, help="signatures per bulk request")
    parser.add_argument(
        "--reference-style",
        choices=["model", "raw"],
        default="model",
        help="model: FastAPI parses the declared body; raw: model_validate_json on the bytes, like intake",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="with --baseline-rev: maximum runs of each, taking turns; each keeps its best",
    )
    parser.add_argument(
        "--baseline-rev",
        help="also run this git revision's intake under the same load (e.g. 46d361b) and report the ratio",
    )
    add_run_arguments(parser)
    return parser.parse_args(argv)


# -- pieces the pipeline bench shares ----------------------------------------------------------------


def intake_env(
    infra: Infrastructure, *, topic_prefix: str, partner_key: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Intake's environment for a bench: the run's topics, XFF trusted from loopback, a partner."""
    return service_env(
        infra,
        topic_prefix=topic_prefix,
        extra={
            "CLAMEUR_TRUSTED_PROXIES": json.dumps(["127.0.0.1/32"]),
            "CLAMEUR_PARTNER_KEYS": json.dumps({partner_key: PARTNER}),
            **(extra or {}),
        },
    )


INTAKE_SETUP = (
    "intake's rate limits at their defaults (per IP: burst 30, 2/s; per email domain: burst 500, "
    '100/s, large mailbox providers exempt); `CLAMEUR_TRUSTED_PROXIES=["127.0.0.1/32"]` and every '
    "request carries a random `X-Forwarded-For` client IP (11-126.x.x.x), and every email is at an "
    "exempt provider, so unique legitimate traffic is never refused"
)


def start_uvicorn(
    run: BenchRun,
    name: str,
    factory: str,
    env: Mapping[str, str],
    workers: int,
    *,
    baseline: Baseline | None = None,
) -> tuple[Child, str]:
    """``factory`` under uvicorn on a free port: this checkout's, or ``baseline``'s."""
    port = free_port()
    env = {**env, "CLAMEUR_INTAKE_PORT": str(port)}
    if baseline is None:
        child = run.start(name, uvicorn_argv(factory, port=port, workers=workers), env)
    else:
        child = run.children.start(
            name,
            uvicorn_argv(factory, port=port, workers=workers, python=baseline.python),
            baseline.env(env),
            run.folder / f"{name}.log",
            cwd=baseline.checkout,
        )
    return child, f"http://127.0.0.1:{port}"


def start_reference(run: BenchRun, env: Mapping[str, str], args: argparse.Namespace) -> tuple[Child, str]:
    """The bare FastAPI reference (``--reference-style``) under intake's server setup, ready."""
    reference, base = start_uvicorn(
        run,
        "reference",
        REFERENCE_FACTORY,
        {**env, "BENCH_REFERENCE_STYLE": args.reference_style},
        args.workers,
    )
    reference.wait_http(f"{base}/openapi.json", consecutive=4 * args.workers)
    return reference, base


def wait_case_known(
    child: Child, base: str, case_id: str, workers: int, timeout_s: float = 60.0
) -> Counter[int]:
    """Wait until every worker knows the case: an empty body gets 422 (fields), not 404 (case).

    Returns the statuses of the probes (they show up in intake's rejection counters).
    """
    statuses: Counter[int] = Counter()
    streak = 0
    url = f"{base}/v1/cases/{case_id}/signatures"

    def known() -> bool:
        nonlocal streak
        child.check_alive()
        # A new connection each time, so the probes reach every worker.
        try:
            status = httpx.post(
                url, content=b"{}", headers={"Content-Type": "application/json"}, timeout=5
            ).status_code
        except httpx.HTTPError:
            status = 0
        statuses[status] += 1
        streak = streak + 1 if status == 422 else 0
        return streak >= 8 * workers

    wait_until(f"intake to know case {case_id}", known, timeout_s=timeout_s, every_s=0.05)
    return statuses


def signatures_env(case_id: str, run_id: str, rate: float = 0.0) -> dict[str, str]:
    env = {"BENCH_CASE": case_id, "BENCH_RUN": run_id, "BENCH_XFF": "1"}
    if rate > 0:
        env["BENCH_RATE"] = f"{rate:.1f}"
    return env


def load_signatures(
    base: str, case_id: str, load_id: str, connections: int, duration_s: float, log: Path
) -> WrkResult:
    """wrk's unique signatures (``bench/wrk/signatures.lua``) as fast as ``connections`` go."""
    env = signatures_env(case_id, load_id)
    return run_wrk(base, "signatures.lua", connections=connections, duration_s=duration_s, env=env, log=log)


def intake_rejections(
    base: str, workers: int, probes: Counter[int]
) -> tuple[dict[str, float] | None, float | None]:
    """Rejections by reason and signatures accepted, summed over the workers, probes left out.

    ``(None, None)`` when the workers' pages could not be told apart (see
    :func:`bench.common.scrape_workers`).
    """
    pages = scrape_workers(f"{base}/metrics", workers)
    if pages is None:
        return None, None
    samples: Samples = summed(pages)
    reasons = by_label(samples, "clameur_intake_rejections_total", "reason")
    reasons["validation"] = reasons.get("validation", 0.0) - probes.get(422, 0)
    reasons["unknown_case"] = reasons.get("unknown_case", 0.0) - probes.get(404, 0)
    accepted = sum(by_label(samples, "clameur_intake_signatures_accepted_total", "action").values())
    return {reason: value for reason, value in reasons.items() if value}, accepted


def describe_reasons(reasons: Mapping[str, float] | None) -> str:
    if reasons is None:
        return "n/a (workers' metrics could not be told apart)"
    if not reasons:
        return "none"
    return ", ".join(f"{reason} {count(value)}" for reason, value in sorted(reasons.items()))


# -- bulk ---------------------------------------------------------------------------------------------


def signer(rng: random.Random, email: str, n: int) -> dict[str, object]:
    """The ``n``-th synthetic signer's fields: 30 countries, fr/en, a quarter consenting."""
    return {
        "first_name": rng.choice(FIRST_NAMES),
        "last_name": rng.choice(LAST_NAMES),
        "email": email,
        "country": COUNTRIES[n % len(COUNTRIES)],
        "locale": "fr" if n % 2 else "en",
        "consent": {"updates": n % 4 == 0},
    }


def write_bulk_bodies(path: Path, *, run_id: str, bodies: int, size: int) -> None:
    """``bodies`` lines, each ``{"signatures": [...]}`` of ``size`` unique signatures."""
    rng = random.Random(11)
    with path.open("wb") as out:
        for body in range(bodies):
            signatures = [signer(rng, f"{run_id}.bulk{body}.{n}@gmail.com", n) for n in range(size)]
            out.write(orjson.dumps({"signatures": signatures}) + b"\n")


# -- the bench ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntakeCounts:
    """What one intake says it did, summed over its workers (``None``: pages not told apart)."""

    accepted: float | None
    reasons: dict[str, float] | None
    produce_attempts: float | None
    produce_errors: float | None


@dataclass(frozen=True)
class CaseSide:
    """One case's runs: today's intake (its own topics), its best maximum, the baseline's beside it."""

    peak: WrkResult
    baseline: WrkResult | None
    client_accepted: int
    """The 202s wrk saw from this intake (bulk items included)."""
    counts: IntakeCounts
    on_topic: int
    contacts_on_topic: int


@dataclass(frozen=True)
class IntakeResults:
    plain: CaseSide
    """Like for like: a case without confirmation (a contact only for the ~25% who consent)."""
    confirming: CaseSide
    """A case that confirms addresses: every signature also writes a contact."""
    paced: WrkResult
    paced_target: float
    bulk: WrkResult
    reference: WrkResult


@dataclass(frozen=True)
class _Served:
    """A started intake under load: its process, its address, and how to name its runs."""

    child: Child
    base: str
    name: str
    run_id: str
    case_id: str
    probes: Counter[int] = field(default_factory=Counter)
    """The statuses of the readiness probes (left out of its rejection counts)."""


@dataclass
class _Load:
    """What wrk did to one intake: its maximum runs and the 202s it saw in all."""

    served: _Served
    peaks: list[WrkResult]
    accepted: int = 0

    def best(self) -> WrkResult:
        return max(self.peaks, key=lambda result: result.ok_per_s)


def confirmation_case(case_id: str) -> CaseState:
    """The bench's case: it confirms addresses, so every signature also writes a contact."""
    return bench_case(case_id).model_copy(update={"confirmation": "email"})


def measure(run: BenchRun, args: argparse.Namespace) -> IntakeResults:
    # First, before any load: checking out and syncing the baseline takes CPU.
    baseline = prepare(args.baseline_rev) if args.baseline_rev else None
    plain_case = bench_case(f"bench-intake-{run.run_id}-plain")
    confirming_case = confirmation_case(f"bench-intake-{run.run_id}")
    partner_key = secrets.token_hex(16)
    # Two intakes of today, each on its own topics: what each case wrote is counted apart.
    topics = run.new_topics()
    plain_topics = asyncio.run(create_topics(run.infra.kafka, f"{run.prefix}plain."))
    try:
        plain = _start_intake(run, "intake-plain", plain_topics, plain_case, partner_key, args)
        confirming = _start_intake(run, "intake", topics, confirming_case, partner_key, args)
        if baseline is None:
            loads = _load_intake(plain, confirming, None, partner_key, run, args)
        else:
            with _baseline_served(run, args, baseline, (plain_case, confirming_case)) as before:
                loads = _load_intake(plain, confirming, before, partner_key, run, args)
        plain_side = _side(run, plain_topics, loads.plain, loads.plain_baseline, args)
        confirming_side = _side(run, topics, loads.confirming, loads.confirming_baseline, args)
    finally:
        if not args.keep:
            asyncio.run(delete_topics(run.infra.kafka, plain_topics))
    env = intake_env(run.infra, topic_prefix=topics.prefix, partner_key=partner_key)
    ref = measure_reference(run, env, args, confirming_case.case_id)
    return IntakeResults(plain_side, confirming_side, loads.paced, loads.paced_target, loads.bulk, ref)


def _start_intake(
    run: BenchRun, name: str, topics: Topics, case: CaseState, partner_key: str, args: argparse.Namespace
) -> _Served:
    """Today's intake on ``topics`` with ``case`` published, ready and knowing the case."""
    asyncio.run(publish_events(run.infra.kafka, topics.cases, [(case.case_id, case)]))
    env = intake_env(run.infra, topic_prefix=topics.prefix, partner_key=partner_key)
    intake, base = start_uvicorn(run, name, INTAKE_FACTORY, env, args.workers)
    intake.wait_http(f"{base}/readyz", consecutive=4 * args.workers)
    probes = wait_case_known(intake, base, case.case_id, args.workers)
    return _Served(intake, base, name, f"{run.run_id}{name[-1]}", case.case_id, probes)


def _side(
    run: BenchRun, topics: Topics, load: _Load, baseline: WrkResult | None, args: argparse.Namespace
) -> CaseSide:
    """Stop ``load``'s intake after reading its counters, then count what its topics hold."""
    served = load.served
    counts = intake_counts(served.base, args.workers, served.probes)
    run.children.stop(served.child)
    on_topic = sum(asyncio.run(end_offsets(run.infra.kafka, topics.signatures)).values())
    contacts = sum(asyncio.run(end_offsets(run.infra.kafka, topics.contacts)).values())
    return CaseSide(load.best(), baseline, load.accepted, counts, on_topic, contacts)


def intake_counts(base: str, workers: int, probes: Counter[int]) -> IntakeCounts:
    """:func:`intake_rejections`, and the records intake handed to its producer and lost."""
    reasons, accepted = intake_rejections(base, workers, probes)
    pages = scrape_workers(f"{base}/metrics", workers)
    if pages is None:
        return IntakeCounts(accepted, reasons, None, None)
    samples = summed(pages)
    return IntakeCounts(
        accepted,
        reasons,
        total(samples, "clameur_intake_produce_attempts_total"),
        total(samples, "clameur_intake_produce_errors_total"),
    )


def measure_reference(
    run: BenchRun, env: Mapping[str, str], args: argparse.Namespace, case_id: str
) -> WrkResult:
    reference, ref_base = start_reference(run, env, args)
    log = run.folder / "wrk.log"
    load = signatures_env(case_id, run.run_id + "r")
    c = args.connections
    run_wrk(ref_base, "signatures.lua", connections=c, duration_s=args.warmup, env=load, log=log)
    ref = run_wrk(ref_base, "signatures.lua", connections=c, duration_s=args.duration, env=load, log=log)
    say(f"reference at {c} connections: {ref.ok_per_s:,.0f}/s, p99 {millis(ref.p99_s)}")
    run.children.stop(reference)
    return ref


def _maximum(
    served: _Served, case_id: str, label: str, duration_s: float, run: BenchRun, args: argparse.Namespace
) -> WrkResult:
    """One wrk run at ``--connections``, with the CPU the intake and the broker spent meanwhile."""
    broker = listener_pid(int(run.infra.kafka.rpartition(":")[2]))
    intake_before = tree_cpu_seconds(served.child.pid)
    broker_before = tree_cpu_seconds(broker) if broker is not None else None
    result = load_signatures(
        served.base, case_id, served.run_id + label, args.connections, duration_s, run.folder / "wrk.log"
    )
    broker_cpu = None
    if broker is not None and broker_before is not None:
        broker_cpu = tree_cpu_seconds(broker) - broker_before
    result = dataclasses.replace(
        result, server_cpu_s=tree_cpu_seconds(served.child.pid) - intake_before, broker_cpu_s=broker_cpu
    )
    if label != "w":
        say(
            f"{served.name} on {case_id} at {args.connections} connections: "
            f"{result.ok_per_s:,.0f} accepted/s, p99 {millis(result.p99_s)}, "
            f"CPU per 202: intake {_micros(result.cpu_us_per_ok(result.server_cpu_s))}, "
            f"broker {_micros(result.cpu_us_per_ok(result.broker_cpu_s))}"
        )
    return result


def _micros(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} µs"


@dataclass(frozen=True)
class _Loads:
    plain: _Load
    confirming: _Load
    plain_baseline: WrkResult | None
    confirming_baseline: WrkResult | None
    paced: WrkResult
    paced_target: float
    bulk: WrkResult


def _load_intake(
    plain: _Served,
    confirming: _Served,
    before: _Served | None,
    partner_key: str,
    run: BenchRun,
    args: argparse.Namespace,
) -> _Loads:
    """Warm-ups, the maxima taking turns, then the paced run and the bulk import (confirmation case).

    Each round runs today's intake on the like-for-like case, the baseline on the same case,
    today's on the confirmation case, the baseline on that case, and each keeps its best
    round: a neighbour's burst on a shared machine lowers one round, not the comparison.
    The baseline predates confirmation and contacts: on both cases it writes one record.
    """
    loads = {served.name: _Load(served, []) for served in (plain, confirming)}
    befores: dict[str, list[WrkResult]] = {plain.name: [], confirming.name: []}
    for load in loads.values():
        load.accepted += _maximum(load.served, load.served.case_id, "w", args.warmup, run, args).ok
    if before is not None:
        _maximum(before, plain.case_id, "w", args.warmup, run, args)
    for round_ in range(args.rounds if before is not None else 1):
        for load in loads.values():
            case_id = load.served.case_id
            peak = _maximum(load.served, case_id, f"m{round_}", args.duration, run, args)
            load.peaks.append(peak)
            load.accepted += peak.ok
            if before is not None:
                label = f"m{round_}{load.served.name[-1]}"
                befores[load.served.name].append(_maximum(before, case_id, label, args.duration, run, args))
    heavy = loads[confirming.name]
    target = args.pace * heavy.best().ok_per_s
    paced = run_wrk(
        confirming.base,
        "signatures.lua",
        connections=args.connections,
        duration_s=args.duration,
        env=signatures_env(confirming.case_id, run.run_id + "p", rate=target),
        log=run.folder / "wrk.log",
    )
    say(f"intake paced at {target:,.0f}/s: {paced.ok_per_s:,.0f}/s, p99 {millis(paced.p99_s)}")
    bulk = _bulk(confirming, partner_key, run, args)
    heavy.accepted += paced.ok + bulk.accepted_items
    return _Loads(
        loads[plain.name],
        heavy,
        _best(befores[plain.name]),
        _best(befores[confirming.name]),
        paced,
        target,
        bulk,
    )


def _best(results: list[WrkResult]) -> WrkResult | None:
    return max(results, key=lambda result: result.ok_per_s) if results else None


def _bulk(served: _Served, partner_key: str, run: BenchRun, args: argparse.Namespace) -> WrkResult:
    bodies = run.folder / "bulk.jsonl"
    write_bulk_bodies(bodies, run_id=run.run_id, bodies=16, size=args.bulk_size)
    bulk = run_wrk(
        served.base,
        "bulk.lua",
        connections=args.bulk_connections,
        duration_s=args.bulk_duration,
        env={"BENCH_CASE": served.case_id, "BENCH_BULK_FILE": str(bodies), "BENCH_PARTNER_KEY": partner_key},
        timeout_s=30,
        log=run.folder / "wrk.log",
    )
    say(f"bulk: {bulk.accepted_items / bulk.duration_s:,.0f} signatures/s")
    return bulk


@contextlib.contextmanager
def _baseline_served(
    run: BenchRun, args: argparse.Namespace, baseline: Baseline, cases: tuple[CaseState, ...]
) -> Iterator[_Served]:
    """The baseline revision's intake, started on its own topics with the same cases, until the block ends."""
    prefix = f"{run.prefix}base."
    bootstrap = run.infra.kafka
    baseline.create_topics(bootstrap, prefix, signature_partitions=6)
    try:
        # The revision's own topic names (its signatures topic may be another version).
        cases_topic = next(name for name in baseline.topic_names(prefix) if name.endswith("cases.v1"))
        asyncio.run(publish_events(bootstrap, cases_topic, [(case.case_id, case) for case in cases]))
        env = intake_env(run.infra, topic_prefix=prefix, partner_key=secrets.token_hex(16))
        name = f"intake-{args.baseline_rev}"
        intake, base = start_uvicorn(run, name, INTAKE_FACTORY, env, args.workers, baseline=baseline)
        intake.wait_http(f"{base}/readyz", consecutive=4 * args.workers)
        for case in cases:
            wait_case_known(intake, base, case.case_id, args.workers)
        try:
            yield _Served(intake, base, name, run.run_id + "b", cases[0].case_id)
        finally:
            run.children.stop(intake)
    finally:
        if not args.keep:
            asyncio.run(delete_topic_names(bootstrap, baseline.topic_names(prefix)))


def on_broker(side: CaseSide, *, every_contact: bool) -> tuple[bool, str]:
    """Whether every signature and contact intake acknowledged is on the topics, and the numbers.

    Intake's own accepted counter (summed over its workers) must not exceed the records;
    records beyond it are only legitimate for answers that were 503s (the broker's ack came
    too late).  The records handed to the producer less those it lost (``produce_errors``)
    must all be on the two topics, and nothing more than was handed.  On a confirmation
    case (``every_contact``) each signature also has its contact.  Without intake's
    counters, the 202s wrk saw are the floor.
    """
    records, seen, contacts = side.on_topic, side.client_accepted, side.contacts_on_topic
    counts = side.counts
    accepted = counts.accepted
    if accepted is None or counts.produce_attempts is None or counts.produce_errors is None:
        floor = seen if every_contact else 0
        return records >= seen and contacts >= floor, (
            f"{count(records)} records on the topic ({count(contacts)} contacts) "
            f"for {count(seen)} 202s seen by wrk "
            "(bulk items included; intake's counters could not be read)"
        )
    broker = (counts.reasons or {}).get("broker", 0.0)
    handed, lost = counts.produce_attempts, counts.produce_errors
    exact = seen <= accepted <= records <= accepted + broker and handed - lost <= records + contacts <= handed
    if every_contact:
        # A confirmation case: every signature has its contact (a 503 may have left either).
        exact = exact and accepted <= contacts <= accepted + broker
    return exact, (
        f"intake acknowledged {count(accepted)} (wrk saw {count(seen)}, bulk items included), "
        f"{count(records)} records on the signatures topic and {count(contacts)} on contacts "
        f"({count(handed)} records handed to the producer, {count(lost)} not acknowledged), "
        f"{count(broker)} refused for the broker"
    )


PLAIN = "like for like (a case without confirmation)"
CONFIRMING = "confirmation case (every signature also writes a contact)"


def report_rows(results: IntakeResults, args: argparse.Namespace) -> tuple[list[Row], bool]:
    """The table, and whether the exactness checks passed."""
    plain, confirming = results.plain, results.confirming
    paced, bulk, ref = results.paced, results.bulk, results.reference
    bulk_rate = bulk.accepted_items / bulk.duration_s if bulk.duration_s else 0.0
    plain_exact, plain_evidence = on_broker(plain, every_contact=False)
    exact, evidence = on_broker(confirming, every_contact=True)
    c = args.connections
    rows = [
        *_maximum_rows(plain.peak, confirming.peak, ref, c),
        Row(
            "CPU per accepted signature at the maximum, intake / broker",
            f"like for like {_cpu(plain.peak)}; confirmation case {_cpu(confirming.peak)}",
        ),
        Row(f"latency at {c} connections, p50 / p99, {PLAIN}", _latency(plain.peak)),
        Row(f"latency at {c} connections, p50 / p99, {CONFIRMING}", _latency(confirming.peak)),
        Row(
            f"latency at {args.pace:.0%} of the maximum, p50 / p99, confirmation case",
            f"{_latency(paced)} (aimed at {per_second(results.paced_target)}, "
            f"got {per_second(paced.ok_per_s)})",
            "p99 ≤ 50 ms",
            paced.p99_s <= GOAL_PACED_P99_S,
        ),
        Row(
            f"bulk import, signatures/s ({args.bulk_size} a request, {args.bulk_connections} connections), "
            "confirmation case",
            f"{per_second(bulk_rate)} (p99 {millis(bulk.p99_s)} a request)",
            "≥ 50,000/s",
            bulk_rate >= GOAL_BULK_RATE,
        ),
        Row(f"reference latency at {c} connections, p50 / p99", _latency(ref)),
        Row(
            "non-2xx answers from today's intakes (maximum and paced runs)",
            f"{count(plain.peak.non_2xx + confirming.peak.non_2xx + paced.non_2xx)}; timeouts "
            f"{count(plain.peak.timeouts + confirming.peak.timeouts + paced.timeouts)}",
        ),
        Row(
            "bulk requests by status",
            ", ".join(f"{status}: {count(n)}" for status, n in sorted(bulk.statuses.items())) or "none",
        ),
        Row(
            "intake's rejections by reason (whole run, bulk items counted one by one)",
            f"like for like: {describe_reasons(plain.counts.reasons)}; "
            f"confirmation case: {describe_reasons(confirming.counts.reasons)}",
        ),
        Row(f"every 202 is on the broker, {PLAIN}", plain_evidence, "exact", plain_exact),
        Row("every 202 is on the broker, with its contact, confirmation case", evidence, "exact", exact),
    ]
    if plain.baseline is not None and confirming.baseline is not None:
        rows[4:4] = baseline_rows(plain, confirming, args)
    return rows, exact and plain_exact


def _cpu(result: WrkResult) -> str:
    intake = _micros(result.cpu_us_per_ok(result.server_cpu_s))
    return f"{intake} / {_micros(result.cpu_us_per_ok(result.broker_cpu_s))}"


def _cpu_growth(side: CaseSide) -> str:
    """Today's intake CPU per signature against the baseline's, as a change in percent."""
    today = side.peak.cpu_us_per_ok(side.peak.server_cpu_s)
    before = side.baseline.cpu_us_per_ok(side.baseline.server_cpu_s) if side.baseline else None
    return "n/a" if today is None or not before else f"{today / before - 1:+.0%}"


def _latency(result: WrkResult) -> str:
    return f"{millis(result.p50_s)} / {millis(result.p99_s)}"


def _maximum_rows(plain: WrkResult, confirming: WrkResult, ref: WrkResult, c: int) -> list[Row]:
    """The maximum rate on each case, and its ratio to the reference (the goal: like for like)."""

    def ratio(peak: WrkResult) -> float:
        return peak.ok_per_s / ref.ok_per_s if ref.ok_per_s else 0.0

    return [
        Row(
            f"accepted signatures/s at {c} connections, {PLAIN}",
            per_second(plain.ok_per_s),
            "≥ 5,000/s",
            plain.ok_per_s >= GOAL_RATE,
        ),
        Row(
            f"accepted signatures/s at {c} connections, {CONFIRMING}",
            per_second(confirming.ok_per_s),
            "≥ 5,000/s",
            confirming.ok_per_s >= GOAL_RATE,
        ),
        Row(
            f"ratio to the bare FastAPI reference, {PLAIN}",
            f"{ratio(plain):.2f} (reference {per_second(ref.ok_per_s)})",
            f"≥ {GOAL_RATIO}",
            ratio(plain) >= GOAL_RATIO,
        ),
        Row(
            f"ratio to the bare FastAPI reference, {CONFIRMING} (shown, no goal)", f"{ratio(confirming):.2f}"
        ),
    ]


def baseline_rows(plain: CaseSide, confirming: CaseSide, args: argparse.Namespace) -> list[Row]:
    """Today's intake beside the baseline revision's, same load: the cost of the change."""
    assert plain.baseline is not None and confirming.baseline is not None
    rev = args.baseline_rev

    def ratio(side: CaseSide) -> tuple[float, str]:
        assert side.baseline is not None
        before = side.baseline.ok_per_s
        value = side.peak.ok_per_s / before if before else 0.0
        return value, f"{value:.2f} ({per_second(side.peak.ok_per_s)} / {per_second(before)})"

    def described(before: WrkResult) -> str:
        return (
            f"{per_second(before.ok_per_s)} (p50 / p99 {_latency(before)}, non-2xx {count(before.non_2xx)})"
        )

    plain_ratio, plain_text = ratio(plain)
    return [
        Row(
            f"accepted signatures/s of {rev} (same run, same load; it writes one record either way)",
            f"beside like for like {described(plain.baseline)}; "
            f"beside the confirmation case {described(confirming.baseline)}",
        ),
        Row(
            f"CPU per accepted signature of {rev} at the maximum, intake / broker",
            f"beside like for like {_cpu(plain.baseline)}; beside the confirmation case "
            f"{_cpu(confirming.baseline)} (today's intake per signature: {_cpu_growth(plain)} like for "
            f"like, {_cpu_growth(confirming)} on the confirmation case)",
        ),
        Row(
            f"ratio to {rev}, {PLAIN}: the cost of protection",
            plain_text,
            f"≥ {GOAL_BASELINE_RATIO}",
            plain_ratio >= GOAL_BASELINE_RATIO,
        ),
        Row(
            f"ratio to {rev}, {CONFIRMING}: protection plus a contact on every signature (shown, no goal)",
            ratio(confirming)[1],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    return run_measured("intake", parse_args(argv), measure, write_report)


def write_report(results: IntakeResults, args: argparse.Namespace, facts: MachineFacts) -> int:
    rows, exact = report_rows(results, args)
    setup = [
        f"intake and the reference each served by `uvicorn --factory ... --workers {args.workers} "
        "--no-access-log --log-level warning` (the same server setup; `python -m intake` runs a single "
        "process and has no workers setting, `intake.app:app_from_environment` is its factory)",
        "reference: `bench/reference_app.py`, the same path and intake's `SignatureForm`, "
        "202 without a broker "
        + (
            "(FastAPI parses the declared body)"
            if args.reference_style == "model"
            else "(`model_validate_json` on the raw body, as intake does)"
        ),
        f"wrk {facts.cores} threads, {args.connections} connections, {args.duration:.0f} s per run "
        f"after {args.warmup:.0f} s of warm-up; `bench/wrk/signatures.lua`: unique emails, "
        "30 countries, fr/en, about 25% consenting",
        "two cases, each with its own intake and topics: like for like, a case without confirmation "
        "(a contact only for the ~25% who consent; round 1 carried the same supporters' data, the "
        "email of those who consent); and a case that confirms addresses (`confirmation: email`), "
        "where every signature also writes a contact (the worst case). The goals on the maximum rate "
        "and the ratios apply like for like (round 1's reference goal was set on such a case); the "
        "paced run and the bulk import run on the confirmation case",
        f"paced run: wrk's `delay()` spreads {args.pace:.0%} of the measured maximum over the "
        "connections; wrk is closed-loop (a connection waits for its answer), so the rate is "
        "approximate and latency is not corrected for coordinated omission",
        INTAKE_SETUP,
        "Kafka: the dev profile's single broker on the same machine, the run's own topics "
        "(signatures.v2 and contacts.v1 with 6 partitions each); producer `acks=all`, idempotent, "
        "intake's default linger",
    ]
    if args.baseline_rev:
        setup.append(
            f"baseline: revision `{args.baseline_rev}` checked out under `.cache/bench/` with its own "
            "locked virtualenv (`uv sync --frozen`), its own topics, the same uvicorn setup, cases and "
            "wrk load (it predates contacts: one record a signature on either case); all served at "
            f"once, the maximum runs taking turns ({args.rounds} rounds of today like for like, the "
            "baseline, today on the confirmation case, the baseline), each keeping its best"
        )
    return report(
        "intake",
        title="Intake (`make bench-intake`)",
        facts=facts,
        rows=rows,
        setup=setup,
        options=args,
        failed=None if exact else "some 202s are not on the broker",
    )


if __name__ == "__main__":
    sys.exit(main())
