"""``make bench-overload``: intake offered 1x, 2x and 4x its capacity, open-loop, bounds on and off.

    python -m bench.overload [--duration 60] [--capacity-duration 15] [--workers 2] [--multiples 1,2,4]

1. Kafka of the dev stack (started if needed); an open case on two sets of the run's
   topics, one per intake.
2. Two intakes on free ports, each ``uvicorn --factory intake.app:app_from_environment
   --workers N`` with the bench's XFF setup (:func:`bench.intake.intake_env`): one with its
   admission bounds at their defaults, one with ``CLAMEUR_ADMISSION_ENABLED=false``
   (today's behaviour before issue 19: every request queued).
3. Capacity: wrk (closed loop, 64 connections, unique signatures) against the bounded one.
4. vegeta (open loop: a fixed offered rate whatever the answers; installed by
   ``scripts/install-vegeta`` into ``.cache/tools/bin``) at each multiple of the capacity for
   ``--duration``, the two intakes taking turns at each rate (side by side in one run).
   Every request is a signature from a targets file of unique bodies and client IPs.
5. Exactness: for each intake, the 202s its clients saw <= its accepted counter <= the
   records on its signatures topic (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import random
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import intake as intake_bench
from bench.common import (
    ROOT,
    BenchError,
    Child,
    MachineFacts,
    Row,
    WrkResult,
    by_label,
    count,
    millis,
    per_second,
    report,
    say,
    scrape_workers,
    summed,
    wait_until,
)
from bench.infra import (
    BenchRun,
    add_run_arguments,
    bench_case,
    create_topics,
    delete_topics,
    end_offsets,
    publish_events,
    run_measured,
)
from clameur.topics import Topics

VEGETA = ROOT / ".cache" / "tools" / "bin" / "vegeta"
INSTALL_VEGETA = ROOT / "scripts" / "install-vegeta"

GOAL_ACCEPTED_SHARE = 0.9
GOAL_ADMITTED_P99_S = 0.100
GOAL_REFUSED_P99_S = 0.010
MODES = ("bounded", "unbounded")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each open-loop run")
    parser.add_argument("--capacity-duration", type=float, default=15.0, help="seconds of the wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    parser.add_argument("--connections", type=int, default=64, help="wrk's, for the capacity")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of each intake")
    parser.add_argument("--multiples", default="1,2,4", help="offered rates, as multiples of the capacity")
    parser.add_argument("--timeout", type=float, default=10.0, help="vegeta's request timeout (s)")
    parser.add_argument(
        "--max-workers", type=int, default=4000, help="vegeta's most requests in flight (its connections)"
    )
    parser.add_argument("--targets", type=int, default=200_000, help="unique signatures in the targets file")
    parser.add_argument(
        "--bound",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the bounded intake, e.g. INTAKE_MAX_IN_FLIGHT=32 (CLAMEUR_ prefixed; repeatable)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="which intakes to run: bounded,unbounded")
    add_run_arguments(parser)
    return parser.parse_args(argv)


# -- vegeta ----------------------------------------------------------------------------------------------


def ensure_vegeta() -> Path:
    """vegeta in .cache/tools/bin, installed from the Go module proxy the first time."""
    completed = subprocess.run([str(INSTALL_VEGETA)], capture_output=True, text=True, check=False)
    if completed.returncode != 0 or not VEGETA.exists():
        raise BenchError(f"could not install vegeta:\n{completed.stdout}\n{completed.stderr}")
    return VEGETA


def write_targets(path: Path, url: str, *, run_id: str, targets: int) -> None:
    """vegeta's JSON targets: unique signatures, each from its own client IP (intake trusts loopback)."""
    rng = random.Random(19)
    with path.open("wb") as out:
        for n in range(targets):
            body = orjson.dumps(intake_bench.signer(rng, f"{run_id}.o{n}@gmail.com", n))
            ip = f"{rng.randint(11, 126)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            target = {
                "method": "POST",
                "url": url,
                "header": {"Content-Type": ["application/json"], "X-Forwarded-For": [ip]},
                "body": base64.b64encode(body).decode(),
            }
            out.write(orjson.dumps(target) + b"\n")


@dataclass(frozen=True)
class OpenLoop:
    """One open-loop run: what was offered, what came back, how fast (latencies in seconds)."""

    mode: str
    multiple: float
    aimed_per_s: float
    duration_s: float
    sent: int
    statuses: dict[int, int]
    timeouts: int
    errors: int
    admitted_p50_s: float | None
    admitted_p99_s: float | None
    refused_p50_s: float | None
    refused_p99_s: float | None
    retry_after: dict[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s

    @property
    def offered_per_s(self) -> float:
        return self.sent / self.duration_s

    @property
    def refused(self) -> int:
        return self.statuses.get(503, 0)


def attack(
    vegeta: Path, targets: Path, *, rate: float, args: argparse.Namespace, out: Path, log: Path
) -> None:
    argv = [
        str(vegeta),
        "attack",
        "-format=json",
        f"-targets={targets}",
        f"-rate={round(rate)}/s",
        f"-duration={round(args.duration)}s",
        f"-timeout={round(args.timeout)}s",
        f"-max-workers={args.max_workers}",
        "-max-body=0",
        f"-output={out}",
    ]
    say(f"vegeta: {' '.join(argv[1:])}")
    with log.open("a") as err:
        completed = subprocess.run(argv, stderr=err, check=False, timeout=args.duration + args.timeout + 120)
    if completed.returncode != 0:
        raise BenchError(f"vegeta failed ({completed.returncode}); see {log}")


def _quantiles(latencies: list[int]) -> tuple[float | None, float | None]:
    if not latencies:
        return None, None
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return p50 / 1e9, p99 / 1e9


def read_results(vegeta: Path, results: Path) -> Iterator[list[str]]:
    """vegeta's results as CSV rows: timestamp, code, latency (ns), bytes out, bytes in, error, ..."""
    with subprocess.Popen(
        [str(vegeta), "encode", "--to", "csv", str(results)], stdout=subprocess.PIPE, text=True
    ) as encoder:
        assert encoder.stdout is not None
        yield from csv.reader(encoder.stdout)
    if encoder.returncode != 0:
        raise BenchError(f"vegeta encode failed ({encoder.returncode})")


def summarize(
    rows: Iterator[list[str]], *, mode: str, multiple: float, aimed: float, duration_s: float
) -> OpenLoop:
    statuses: Counter[int] = Counter()
    admitted: list[int] = []
    refused: list[int] = []
    timeouts = errors = sent = 0
    for row in rows:
        sent += 1
        status, latency, error = int(row[1]), int(row[2]), row[5]
        statuses[status] += 1
        if status == 202:
            admitted.append(latency)
        elif status == 503:
            refused.append(latency)
        elif status == 0:
            if "timeout" in error.lower() or "deadline" in error.lower():
                timeouts += 1
            else:
                errors += 1
    a50, a99 = _quantiles(admitted)
    r50, r99 = _quantiles(refused)
    return OpenLoop(
        mode, multiple, aimed, duration_s, sent, dict(statuses), timeouts, errors, a50, a99, r50, r99
    )


# -- the bench -------------------------------------------------------------------------------------------


@dataclass
class Served:
    """One intake of the run, its topics and targets, and what its clients saw accepted."""

    mode: str
    child: Child
    base: str
    topics: Topics
    targets: Path
    probes: Counter[int]
    seen_accepted: int = 0
    others: list[Served] = field(default_factory=list)
    intake_accepted: float | None = None
    broker_refused: float = 0.0
    on_topic: int = 0
    refused_for_load: float = 0.0


@dataclass(frozen=True)
class OverloadResults:
    capacity: WrkResult
    runs: list[OpenLoop]
    served: list[Served]


def _serve(run: BenchRun, mode: str, args: argparse.Namespace, case_id: str, topics: Topics) -> Served:
    case = bench_case(case_id)
    asyncio.run(publish_events(run.infra.kafka, topics.cases, [(case.case_id, case)]))
    extra = {"CLAMEUR_ADMISSION_ENABLED": "true" if mode == "bounded" else "false"}
    if mode == "bounded":
        extra.update(("CLAMEUR_" + name, value) for name, _, value in (b.partition("=") for b in args.bound))
    env = intake_bench.intake_env(
        run.infra, topic_prefix=topics.prefix, partner_key=secrets.token_hex(16), extra=extra
    )
    child, base = intake_bench.start_uvicorn(
        run, f"intake-{mode}", intake_bench.INTAKE_FACTORY, env, args.workers
    )
    child.wait_http(f"{base}/readyz", consecutive=4 * args.workers)
    probes = intake_bench.wait_case_known(child, base, case.case_id, args.workers)
    targets = run.folder / f"targets-{mode}.jsonl"
    write_targets(
        targets, f"{base}/v1/cases/{case_id}/signatures", run_id=run.run_id + mode[0], targets=args.targets
    )
    return Served(mode, child, base, topics, targets, probes)


def _wrk(
    served: Served, case_id: str, label: str, duration_s: float, run: BenchRun, args: argparse.Namespace
) -> WrkResult:
    load_id = run.run_id + served.mode[0] + label
    result = intake_bench.load_signatures(
        served.base, case_id, load_id, args.connections, duration_s, run.folder / "wrk.log"
    )
    served.seen_accepted += result.ok
    return result


def _open_loop(
    vegeta: Path, served: Served, multiple: float, rate: float, run: BenchRun, args: argparse.Namespace
) -> OpenLoop:
    out = run.folder / f"vegeta-{served.mode}-{multiple:g}x.bin"
    _wait_idle(served, args)
    attack(vegeta, served.targets, rate=rate, args=args, out=out, log=run.folder / "vegeta.log")
    result = summarize(
        read_results(vegeta, out), mode=served.mode, multiple=multiple, aimed=rate, duration_s=args.duration
    )
    out.unlink()
    served.seen_accepted += result.accepted
    say(
        f"{served.mode} at {multiple:g}x ({per_second(rate)}): offered {per_second(result.offered_per_s)}, "
        f"accepted {per_second(result.accepted_per_s)}, 202 p99 {millis(result.admitted_p99_s)}, "
        f"503 {count(result.refused)} p99 {millis(result.refused_p99_s)}, timeouts {count(result.timeouts)}, "
        f"errors {count(result.errors)}"
    )
    return result


def _in_flight(served: Served, args: argparse.Namespace) -> float:
    pages = scrape_workers(f"{served.base}/metrics", args.workers)
    if pages is None:
        return 0.0
    return sum(by_label(summed(pages), "clameur_admission_in_flight", "lane").values())


def _wait_idle(served: Served, args: argparse.Namespace) -> None:
    """Until the intakes hold no request: the last run's backlog must not load the next."""
    for one in served.others:

        def idle(one: Served = one) -> bool:
            return _in_flight(one, args) == 0

        wait_until(f"{one.mode} idle", idle, timeout_s=60, every_s=0.5)
    time.sleep(2)


def _tally_up(run: BenchRun, served: Served, args: argparse.Namespace) -> None:
    pages = scrape_workers(f"{served.base}/metrics", args.workers)
    if pages is not None:
        samples = summed(pages)
        served.intake_accepted = sum(
            by_label(samples, "clameur_intake_signatures_accepted_total", "action").values()
        )
        served.broker_refused = by_label(samples, "clameur_intake_rejections_total", "reason").get(
            "broker", 0.0
        )
        outcomes = {
            labels: value
            for (name, labels), value in samples.items()
            if name == "clameur_admission_requests_total"
        }
        served.refused_for_load = sum(v for labels, v in outcomes.items() if ("outcome", "refused") in labels)
    run.children.stop(served.child)
    served.on_topic = sum(asyncio.run(end_offsets(run.infra.kafka, served.topics.signatures)).values())


def measure(run: BenchRun, args: argparse.Namespace) -> OverloadResults:
    vegeta = ensure_vegeta()
    case_id = f"bench-overload-{run.run_id}"
    first = run.new_topics()
    second = asyncio.run(create_topics(run.infra.kafka, f"{run.prefix}off-"))
    try:
        modes = args.modes.split(",")
        served = [
            _serve(run, mode, args, case_id, topics)
            for mode, topics in zip(modes, (first, second), strict=False)
        ]
        for one in served:
            one.others = served
        for one in served:
            _wrk(one, case_id, "w", args.warmup, run, args)
        capacity = _wrk(served[0], case_id, "c", args.capacity_duration, run, args)
        say(
            f"capacity (wrk, {args.connections} connections): {per_second(capacity.ok_per_s)}, "
            f"p99 {millis(capacity.p99_s)}"
        )
        runs = [
            _open_loop(vegeta, one, multiple, multiple * capacity.ok_per_s, run, args)
            for multiple in (float(m) for m in args.multiples.split(","))
            for one in served
        ]
        for one in served:
            _tally_up(run, one, args)
    finally:
        if not args.keep:
            asyncio.run(delete_topics(run.infra.kafka, second))
    return OverloadResults(capacity, runs, served)


def exact(served: Served) -> tuple[bool, str]:
    """The 202s seen <= intake's accepted counter <= the records <= accepted + broker 503s."""
    accepted = served.intake_accepted
    if accepted is None:
        return served.on_topic >= served.seen_accepted, (
            f"{count(served.on_topic)} records for {count(served.seen_accepted)} 202s seen "
            "(intake's counters could not be read)"
        )
    ok = served.seen_accepted <= accepted <= served.on_topic <= accepted + served.broker_refused
    return ok, (
        f"clients saw {count(served.seen_accepted)} 202s, intake acknowledged {count(accepted)}, "
        f"{count(served.on_topic)} records on its topic ({count(served.broker_refused)} broker 503s)"
    )


def _run_rows(result: OpenLoop, capacity: float) -> list[Row]:
    label = f"{result.mode}, {result.multiple:g}x ({per_second(result.aimed_per_s)} aimed)"
    bounded = result.mode == "bounded"
    share = result.accepted_per_s / capacity if capacity else 0.0
    judged = bounded and result.multiple >= 2
    rows = [
        Row(
            f"{label}: offered, accepted (share of capacity)",
            f"{per_second(result.offered_per_s)}, {per_second(result.accepted_per_s)} ({share:.2f})",
            f"≥ {GOAL_ACCEPTED_SHARE}" if judged else "",
            share >= GOAL_ACCEPTED_SHARE if judged else None,
        ),
        Row(
            f"{label}: 202 latency p50 / p99",
            f"{millis(result.admitted_p50_s)} / {millis(result.admitted_p99_s)}",
            "p99 ≤ 100 ms" if bounded else "",
            (result.admitted_p99_s or 0.0) <= GOAL_ADMITTED_P99_S if bounded else None,
        ),
        Row(
            f"{label}: 503 count, latency p50 / p99",
            f"{count(result.refused)}, {millis(result.refused_p50_s)} / {millis(result.refused_p99_s)}",
            "p99 ≤ 10 ms" if bounded and result.refused else "",
            (result.refused_p99_s or 0.0) <= GOAL_REFUSED_P99_S if bounded and result.refused else None,
        ),
        Row(
            f"{label}: timeouts, other errors, other statuses",
            f"{count(result.timeouts)}, {count(result.errors)}, "
            + (
                ", ".join(
                    f"{s}: {count(n)}" for s, n in sorted(result.statuses.items()) if s not in (0, 202, 503)
                )
                or "none"
            ),
            "no timeouts" if bounded else "",
            result.timeouts == 0 if bounded else None,
        ),
    ]
    return rows


def report_rows(results: OverloadResults) -> tuple[list[Row], list[str]]:
    capacity = results.capacity.ok_per_s
    rows = [
        Row(
            "capacity: accepted/s, closed loop (wrk, 64 connections)",
            f"{per_second(capacity)}, p99 {millis(results.capacity.p99_s)}",
        )
    ]
    for result in results.runs:
        rows += _run_rows(result, capacity)
    failures = []
    for served in results.served:
        rows.append(
            Row(
                f"{served.mode}: the 503s by cause (whole run, intake's counters)",
                f"for load {count(served.refused_for_load)}, for the broker {count(served.broker_refused)}",
            )
        )
        ok, evidence = exact(served)
        rows.append(Row(f"{served.mode}: every 202 on the broker, once", evidence, "exact", ok))
        if not ok:
            failures.append(f"{served.mode}: {evidence}")
    return rows, failures


def write_report(results: OverloadResults, args: argparse.Namespace, facts: MachineFacts) -> int:
    rows, failures = report_rows(results)
    setup = [
        f"two intakes, each `uvicorn --factory {intake_bench.INTAKE_FACTORY} --workers {args.workers}`, "
        "on their own "
        'topics: `bounded` with the admission defaults (docs/operations.md, "In a surge"), '
        "`unbounded` with `CLAMEUR_ADMISSION_ENABLED=false` (today's behaviour before issue 19)",
        f"capacity: wrk, {args.connections} connections, {args.capacity_duration:.0f} s against `bounded` "
        f"after {args.warmup:.0f} s of warm-up of each (`bench/wrk/signatures.lua`)",
        f"open loop: vegeta {VEGETA_VERSION} (`scripts/install-vegeta`), `-rate` at each multiple of the "
        f"capacity for {args.duration:.0f} s, `-timeout {args.timeout:.0f}s`, `-max-workers "
        f"{args.max_workers}` (at most that many requests in flight: past it vegeta falls behind its "
        "rate, so the offered rate is reported as measured); the two intakes take turns at each rate",
        f"targets: {count(args.targets)} unique signatures (one open case without confirmation), each "
        "with its own `X-Forwarded-For`, cycled when a run needs more",
        intake_bench.INTAKE_SETUP,
        "latencies are vegeta's, from the request's scheduled send to its answer, per status: "
        "202 (admitted) and 503 (refused for load)",
        "the load generator, Kafka and both intakes share the machine's cores",
    ]
    return report(
        "overload",
        title="Intake beyond its capacity (issue 19)",
        facts=facts,
        rows=rows,
        setup=setup,
        options=args,
        failed="not every 202 is on the broker exactly once" if failures else None,
        details=failures,
    )


VEGETA_VERSION = "v12.12.0"


def main(argv: list[str] | None = None) -> int:
    return run_measured("overload", parse_args(argv), measure, write_report)


if __name__ == "__main__":
    raise SystemExit(main())
