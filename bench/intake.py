"""``make bench-intake``: intake's sustained rate and latency, its bulk rate, against a bare reference.

    python -m bench.intake [--duration 30] [--connections 64] [--workers 2] [--baseline-rev 46d361b]

1. Kafka and Postgres of the dev stack (started if needed); the run's own topics; one
   open case published to the run's ``cases.v1``.
2. Intake on a free port, served by ``uvicorn --factory intake.app:app_from_environment
   --workers N`` (``python -m intake`` has no workers setting), trusting
   ``X-Forwarded-For`` from 127.0.0.1 so each request comes from a random client IP and
   the default rate limits stay on without refusing legitimate unique traffic.
3. wrk (``bench/wrk/signatures.lua``, unique signatures) at 64 connections for
   ``--duration``: the maximum sustained rate; then paced at 80% of it: the latency a
   surge below saturation sees; then partners' bulk import (1,000 signatures a request).
4. The bare FastAPI reference (``bench/reference_app.py``) on the same uvicorn setup,
   the same wrk: the ratio.
5. With ``--baseline-rev REV``: that revision's intake (checked out under
   ``.cache/bench/``, its own locked virtualenv, its own topics) on the same uvicorn setup,
   the same case and the same wrk load: both accepted/s and their ratio, the cost of what
   changed since (issue 14's "at most 10%").
6. Exactness: every 202 the clients received is a record on the run's signatures topic,
   and has its contact on contacts.v1 (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    millis,
    per_second,
    report,
    run_wrk,
    say,
    scrape_workers,
    summed,
    uvicorn_argv,
    wait_until,
)
from bench.infra import (
    BenchRun,
    Infrastructure,
    add_run_arguments,
    bench_case,
    delete_topic_names,
    end_offsets,
    publish_events,
    run_measured,
    service_env,
)
from bench.synthetic import COUNTRIES, FIRST_NAMES, LAST_NAMES
from clameur.events import CaseState

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
class IntakeResults:
    peak: WrkResult
    paced: WrkResult
    paced_target: float
    bulk: WrkResult
    reference: WrkResult
    on_topic: int
    contacts_on_topic: int
    client_accepted: int
    intake_accepted: float | None
    reasons: dict[str, float] | None
    baseline: WrkResult | None = None


@dataclass(frozen=True)
class _IntakeRuns:
    accepted_by_load: int
    peak: WrkResult
    paced: WrkResult
    paced_target: float
    bulk: WrkResult
    probes: Counter[int]
    baseline: WrkResult | None


@dataclass(frozen=True)
class _Served:
    """A started intake under load: its process, its address, and how to name its runs."""

    child: Child
    base: str
    name: str
    run_id: str


def confirmation_case(case_id: str) -> CaseState:
    """The bench's case: it confirms addresses, so every signature also writes a contact."""
    return bench_case(case_id).model_copy(update={"confirmation": "email"})


def measure(run: BenchRun, args: argparse.Namespace) -> IntakeResults:
    # First, before any load: checking out and syncing the baseline takes CPU.
    baseline = prepare(args.baseline_rev) if args.baseline_rev else None
    topics = run.new_topics()
    case = confirmation_case(f"bench-intake-{run.run_id}")
    asyncio.run(publish_events(run.infra.kafka, topics.cases, [(case.case_id, case)]))
    partner_key = secrets.token_hex(16)
    env = intake_env(run.infra, topic_prefix=topics.prefix, partner_key=partner_key)
    intake, base = start_uvicorn(run, "intake", INTAKE_FACTORY, env, args.workers)
    served = _Served(intake, base, "intake", run.run_id)
    intake.wait_http(f"{base}/readyz", consecutive=4 * args.workers)
    probes = wait_case_known(intake, base, case.case_id, args.workers)
    if baseline is None:
        runs = _load_intake(served, None, case.case_id, partner_key, probes, run, args)
    else:
        with _baseline_served(run, args, baseline, case) as before:
            runs = _load_intake(served, before, case.case_id, partner_key, probes, run, args)
    reasons, accepted = intake_rejections(base, args.workers, probes)
    run.children.stop(intake)
    on_topic = sum(asyncio.run(end_offsets(run.infra.kafka, topics.signatures)).values())
    contacts = sum(asyncio.run(end_offsets(run.infra.kafka, topics.contacts)).values())
    ref = measure_reference(run, env, args, case.case_id)
    return IntakeResults(
        runs.peak,
        runs.paced,
        runs.paced_target,
        runs.bulk,
        ref,
        on_topic,
        contacts,
        runs.accepted_by_load,
        accepted,
        reasons,
        runs.baseline,
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
    result = load_signatures(
        served.base, case_id, served.run_id + label, args.connections, duration_s, run.folder / "wrk.log"
    )
    if label != "w":
        say(
            f"{served.name} at {args.connections} connections: "
            f"{result.ok_per_s:,.0f} accepted/s, p99 {millis(result.p99_s)}"
        )
    return result


def _load_intake(
    served: _Served,
    before: _Served | None,
    case_id: str,
    partner_key: str,
    probes: Counter[int],
    run: BenchRun,
    args: argparse.Namespace,
) -> _IntakeRuns:
    """Warm-up, the maximum (round after round beside the baseline's), the paced run, the bulk import.

    With a baseline, the two take turns (this one, then the baseline, ``--rounds`` times)
    and each keeps its best round: a neighbour's burst on a shared machine lowers one round,
    not the comparison.
    """
    accepted = _maximum(served, case_id, "w", args.warmup, run, args).ok
    if before is not None:
        _maximum(before, case_id, "w", args.warmup, run, args)
    peaks, befores = [], []
    for round_ in range(args.rounds if before is not None else 1):
        peaks.append(_maximum(served, case_id, f"m{round_}", args.duration, run, args))
        if before is not None:
            befores.append(_maximum(before, case_id, f"m{round_}", args.duration, run, args))
    accepted += sum(peak.ok for peak in peaks)
    peak = max(peaks, key=lambda result: result.ok_per_s)
    target = args.pace * peak.ok_per_s
    paced = run_wrk(
        served.base,
        "signatures.lua",
        connections=args.connections,
        duration_s=args.duration,
        env=signatures_env(case_id, run.run_id + "p", rate=target),
        log=run.folder / "wrk.log",
    )
    say(f"intake paced at {target:,.0f}/s: {paced.ok_per_s:,.0f}/s, p99 {millis(paced.p99_s)}")
    bulk = _bulk(served, case_id, partner_key, run, args)
    baseline = max(befores, key=lambda result: result.ok_per_s) if befores else None
    return _IntakeRuns(accepted + paced.ok + bulk.accepted_items, peak, paced, target, bulk, probes, baseline)


def _bulk(
    served: _Served, case_id: str, partner_key: str, run: BenchRun, args: argparse.Namespace
) -> WrkResult:
    bodies = run.folder / "bulk.jsonl"
    write_bulk_bodies(bodies, run_id=run.run_id, bodies=16, size=args.bulk_size)
    bulk = run_wrk(
        served.base,
        "bulk.lua",
        connections=args.bulk_connections,
        duration_s=args.bulk_duration,
        env={"BENCH_CASE": case_id, "BENCH_BULK_FILE": str(bodies), "BENCH_PARTNER_KEY": partner_key},
        timeout_s=30,
        log=run.folder / "wrk.log",
    )
    say(f"bulk: {bulk.accepted_items / bulk.duration_s:,.0f} signatures/s")
    return bulk


@contextlib.contextmanager
def _baseline_served(
    run: BenchRun, args: argparse.Namespace, baseline: Baseline, case: CaseState
) -> Iterator[_Served]:
    """The baseline revision's intake, started on its own topics with the same case, until the block ends."""
    prefix = f"{run.prefix}base."
    bootstrap = run.infra.kafka
    baseline.create_topics(bootstrap, prefix, signature_partitions=6)
    try:
        # The revision's own topic names (its signatures topic may be another version).
        cases_topic = next(name for name in baseline.topic_names(prefix) if name.endswith("cases.v1"))
        asyncio.run(publish_events(bootstrap, cases_topic, [(case.case_id, case)]))
        env = intake_env(run.infra, topic_prefix=prefix, partner_key=secrets.token_hex(16))
        name = f"intake-{args.baseline_rev}"
        intake, base = start_uvicorn(run, name, INTAKE_FACTORY, env, args.workers, baseline=baseline)
        intake.wait_http(f"{base}/readyz", consecutive=4 * args.workers)
        wait_case_known(intake, base, case.case_id, args.workers)
        try:
            yield _Served(intake, base, name, run.run_id + "b")
        finally:
            run.children.stop(intake)
    finally:
        if not args.keep:
            asyncio.run(delete_topic_names(bootstrap, baseline.topic_names(prefix)))


def on_broker(results: IntakeResults) -> tuple[bool, str]:
    """Whether every signature intake acknowledged is on the topic, and the numbers that say so.

    Intake's own accepted counter (summed over its workers) must not exceed the records;
    records beyond it are only legitimate for answers that were 503s (the broker's ack came
    too late).  Without intake's counter, the 202s wrk saw are the floor.
    """
    records, seen = results.on_topic, results.client_accepted
    accepted = results.intake_accepted
    broker = (results.reasons or {}).get("broker", 0.0)
    if accepted is None:
        return records >= seen and results.contacts_on_topic >= seen, (
            f"{count(records)} records on the topic ({count(results.contacts_on_topic)} contacts) "
            f"for {count(seen)} 202s seen by wrk "
            "(bulk items included; intake's counters could not be read)"
        )
    contacts = results.contacts_on_topic
    # A confirmation case: every signature has its contact (a 503 may have left either).
    exact = seen <= accepted <= records <= accepted + broker and accepted <= contacts <= accepted + broker
    return exact, (
        f"intake acknowledged {count(accepted)} (wrk saw {count(seen)}, bulk items included), "
        f"{count(records)} records on the signatures topic and {count(contacts)} on contacts, "
        f"{count(broker)} refused for the broker"
    )


def report_rows(results: IntakeResults, args: argparse.Namespace) -> tuple[list[Row], bool]:
    """The table, and whether the exactness check passed."""
    peak, paced, bulk, ref = results.peak, results.paced, results.bulk, results.reference
    ratio = peak.ok_per_s / ref.ok_per_s if ref.ok_per_s else 0.0
    bulk_rate = bulk.accepted_items / bulk.duration_s if bulk.duration_s else 0.0
    exact, evidence = on_broker(results)
    non_2xx = peak.non_2xx + paced.non_2xx
    c = args.connections
    rows = [
        Row(
            f"accepted signatures/s at {c} connections",
            per_second(peak.ok_per_s),
            "≥ 5,000/s",
            peak.ok_per_s >= GOAL_RATE,
        ),
        Row(
            "ratio to the bare FastAPI reference",
            f"{ratio:.2f} (reference {per_second(ref.ok_per_s)})",
            f"≥ {GOAL_RATIO}",
            ratio >= GOAL_RATIO,
        ),
        Row(f"latency at {c} connections, p50 / p99", f"{millis(peak.p50_s)} / {millis(peak.p99_s)}"),
        Row(
            f"latency at {args.pace:.0%} of the maximum, p50 / p99",
            f"{millis(paced.p50_s)} / {millis(paced.p99_s)} "
            f"(aimed at {per_second(results.paced_target)}, got {per_second(paced.ok_per_s)})",
            "p99 ≤ 50 ms",
            paced.p99_s <= GOAL_PACED_P99_S,
        ),
        Row(
            f"bulk import, signatures/s ({args.bulk_size} a request, {args.bulk_connections} connections)",
            f"{per_second(bulk_rate)} (p99 {millis(bulk.p99_s)} a request)",
            "≥ 50,000/s",
            bulk_rate >= GOAL_BULK_RATE,
        ),
        Row(
            f"reference latency at {c} connections, p50 / p99",
            f"{millis(ref.p50_s)} / {millis(ref.p99_s)}",
        ),
        Row(
            "non-2xx answers from intake (maximum and paced runs)",
            f"{count(non_2xx)}; timeouts {count(peak.timeouts + paced.timeouts)}",
        ),
        Row(
            "bulk requests by status",
            ", ".join(f"{status}: {count(n)}" for status, n in sorted(bulk.statuses.items())) or "none",
        ),
        Row(
            "intake's rejections by reason (whole run, bulk items counted one by one)",
            describe_reasons(results.reasons),
        ),
        Row("every 202 is on the broker, with its contact", evidence, "exact", exact),
    ]
    if results.baseline is not None:
        rows[2:2] = baseline_rows(results, args)
    return rows, exact


def baseline_rows(results: IntakeResults, args: argparse.Namespace) -> list[Row]:
    """This intake beside the baseline revision's, same load: the cost of the change."""
    assert results.baseline is not None
    before = results.baseline
    ratio = results.peak.ok_per_s / before.ok_per_s if before.ok_per_s else 0.0
    return [
        Row(
            f"accepted signatures/s of {args.baseline_rev} (same run, same load)",
            f"{per_second(before.ok_per_s)} (p50 / p99 {millis(before.p50_s)} / {millis(before.p99_s)}, "
            f"non-2xx {count(before.non_2xx)})",
        ),
        Row(
            f"ratio to {args.baseline_rev}: the cost of protection",
            f"{ratio:.2f} ({per_second(results.peak.ok_per_s)} / {per_second(before.ok_per_s)})",
            f"≥ {GOAL_BASELINE_RATIO}",
            ratio >= GOAL_BASELINE_RATIO,
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
        "30 countries, fr/en, about 25% consenting; the case confirms addresses "
        "(`confirmation: email`), so every signature also writes a contact (the worst case)",
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
            "locked virtualenv (`uv sync --frozen`), its own topics, the same uvicorn setup, case and "
            f"wrk load; both served at once, their maximum runs taking turns ({args.rounds} each), "
            "each keeping its best"
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
