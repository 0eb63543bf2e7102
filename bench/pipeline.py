"""``make bench``: the whole pipeline under load, and the proof that nothing was lost or counted twice.

    python -m bench.pipeline [--duration 300] [--connections 64] [--workers 2]

1. The run's own topics and database (tally's and notify's schemas), a counting SMTP
   sink, then tally (``python -m tally``), notify (``python -m notify``) and intake
   (``uvicorn --factory intake.app:app_from_environment --workers N``) on free ports.
2. One case created through tally's admin API (milestones ``--milestones``); the bench
   waits until every intake worker knows it.
3. wrk with unique signatures (``bench/wrk/signatures.lua``) at ``--connections`` for
   ``--duration`` seconds.  Meanwhile notify's emails and tally's lag are sampled every
   second.
4. Afterwards: intake's rejections by reason and accepted count (its /metrics, every
   worker), the records on the run's signatures topic, tally's counters once it has
   caught up, accept-to-counted p50/p99 from tally's histogram (bucket deltas), the
   emails sent for the milestones crossed.
5. The bare FastAPI reference on the same uvicorn setup and wrk, services stopped.
6. Exactness (exit 1 otherwise): every signature intake acknowledged is on the topic,
   tally's total for the case equals the distinct signatures on the topic, and equals
   the signatures tally stored; per-country and per-action counters add up to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import orjson

from bench.common import (
    BenchError,
    Child,
    MachineFacts,
    Row,
    Samples,
    WrkResult,
    count,
    free_port,
    histogram_quantile,
    millis,
    per_second,
    report,
    run_wrk,
    say,
    scrape,
    subtract,
    total,
)
from bench.infra import (
    BenchRun,
    add_run_arguments,
    notify_extra,
    read_topic,
    run_measured,
    service_env,
    tally_service_env,
)
from bench.intake import (
    INTAKE_FACTORY,
    INTAKE_SETUP,
    describe_reasons,
    intake_env,
    intake_rejections,
    signatures_env,
    start_reference,
    start_uvicorn,
    wait_case_known,
)
from bench.notify import start_sink
from clameur.settings import ClameurSettings
from devstack.mailsink import read_stats

GOAL_RATE = 4_000.0
GOAL_DURATION_S = 300.0
GOAL_COUNTED_P99_S = 1.0
ACCEPT_TO_COUNTED = "clameur_tally_accept_to_counted_seconds"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers, for intake and reference")
    parser.add_argument("--reference-duration", type=float, help="seconds of load on the reference (≤ 60 s)")
    parser.add_argument(
        "--reference-style", choices=["model", "raw"], default="model", help="see bench/reference_app.py"
    )
    parser.add_argument(
        "--milestones",
        default="1000,10000,100000,1000000",
        help="the case's milestones (comma-separated); each crossing sends emails to consenting supporters",
    )
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the signatures topic")
    parser.add_argument("--notify-rate-cap", type=float, help="CLAMEUR_NOTIFY_RATE_PER_S (notify's default)")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds for tally to catch up")
    parser.add_argument(
        "--mail-window", type=float, default=30.0, help="seconds to watch emails after the load"
    )
    add_run_arguments(parser)
    return parser.parse_args(argv)


# -- sampling during the run ------------------------------------------------------------------------


@dataclass
class Sampler:
    """Scrapes notify and tally once a second in a thread: emails sent, tally's lag."""

    notify_metrics: str
    tally_metrics: str
    emails: list[tuple[float, float]] = field(default_factory=list)
    lag: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                self.emails.append(
                    (now, total(scrape(self.notify_metrics), "clameur_notify_emails_sent_total"))
                )
                self.lag.append(
                    (now, total(scrape(self.tally_metrics), "clameur_tally_consumer_lag_records"))
                )
            except (httpx.HTTPError, ValueError):
                pass  # a missed sample; the next one counts
            self._stop.wait(1.0)

    def email_rate(self) -> tuple[float, float, float]:
        """(emails sent, seconds from the first to the last email seen, emails/s over them)."""
        if len(self.emails) < 2:
            return 0.0, 0.0, 0.0
        start = self.emails[0][1]
        moving = [(t, sent) for t, sent in self.emails if sent > start]
        if not moving:
            return 0.0, 0.0, 0.0
        # The sample before the first increase marks when sending began (to within a second).
        first_t = max(t for t, sent in self.emails if sent <= start and t <= moving[0][0])
        last_t, last_sent = moving[-1]
        # Drop a flat tail: the rate is over the time emails were actually going out.
        for t, sent in moving:
            if sent == last_sent:
                last_t = t
                break
        sent = last_sent - start
        seconds = last_t - first_t
        return sent, seconds, sent / seconds if seconds > 0 else 0.0


# -- pieces -----------------------------------------------------------------------------------------


def create_case(base: str, case_id: str, milestones: list[int]) -> None:
    token = ClameurSettings().admin_token.get_secret_value()
    response = httpx.post(
        f"{base}/v1/admin/cases",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "id": case_id,
            "title": {"fr": "Libérez Nawal Benaissa (banc d'essai)", "en": "Free Nawal Benaissa (benchmark)"},
            "goal": 10 * max(milestones, default=1_000_000),
            "milestones": milestones,
            "actions": ["signature", "letter", "postcard"],
            "default_locale": "fr",
            # This bench measures accepting and counting; confirmation has its own bench.
            "confirmation": "none",
        },
        timeout=30,
    )
    if response.status_code != 201:
        raise BenchError(f"creating case {case_id}: {response.status_code} {response.text}")
    say(f"case {case_id} created (milestones {', '.join(f'{m:,}' for m in milestones)})")


@dataclass
class OnTopic:
    """What the signatures topic holds for the bench case."""

    records: int = 0
    other_cases: int = 0
    distinct: set[bytes] = field(default_factory=set)

    def reader(self, case_id: str) -> Callable[[bytes | None], None]:
        def handle(value: bytes | None) -> None:
            if value is None:
                return
            event = orjson.loads(value)
            if event.get("case_id") != case_id:
                self.other_cases += 1
                return
            self.records += 1
            self.distinct.add(f"{event['supporter_key']}/{event['action']}".encode())

        return handle


@dataclass(frozen=True)
class Stored:
    total: int
    by_dimension: dict[str, int]
    signatures: int


async def stored_counts(dsn: str, case_id: str) -> Stored:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT dimension, sum(count) AS count FROM tally.counters WHERE case_id = $1 GROUP BY dimension",
            case_id,
        )
        by_dimension = {row["dimension"]: int(row["count"]) for row in rows}
        signatures = int(
            await connection.fetchval("SELECT count(*) FROM tally.signatures WHERE case_id = $1", case_id)
        )
        return Stored(by_dimension.get("total", 0), by_dimension, signatures)
    finally:
        await connection.close()


async def counted_total(dsn: str, case_id: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        value = await connection.fetchval(
            "SELECT count FROM tally.counters WHERE case_id = $1 AND dimension = 'total'", case_id
        )
        return int(value or 0)
    finally:
        await connection.close()


def wait_counted(dsn: str, case_id: str, expected: int, tally: Child, timeout_s: float) -> Stored:
    """Wait until tally's total for the case reaches ``expected`` (or time runs out), then read all."""
    deadline = time.monotonic() + timeout_s
    while asyncio.run(counted_total(dsn, case_id)) < expected and time.monotonic() < deadline:
        tally.check_alive()
        time.sleep(0.5)
    time.sleep(2.0)  # anything counted twice would show now
    return asyncio.run(stored_counts(dsn, case_id))


def wait_mail(notify_metrics: str, window_s: float) -> float:
    """Watch notify for up to ``window_s`` until nothing is pending; returns what is pending."""
    started = time.monotonic()
    pending = 0.0
    while time.monotonic() - started < window_s:
        with contextlib.suppress(httpx.HTTPError):
            pending = total(scrape(notify_metrics), "clameur_notify_deliveries_pending")
        if pending == 0 and time.monotonic() - started > 6:
            break  # notify refreshes the gauge every 5 s: a zero after that is real
        time.sleep(1.0)
    return pending


# -- the bench --------------------------------------------------------------------------------------


@dataclass
class PipelineResults:
    load: WrkResult
    reference: WrkResult
    reasons: dict[str, float] | None
    intake_accepted: float | None
    on_topic: OnTopic
    stored: Stored
    tally_delta: Samples
    milestones_emitted: float
    emails: tuple[float, float, float]
    pending_mail: float
    max_lag: float
    wrk_ok_total: int
    mail_messages: int
    mail_distinct: int


def measure(run: BenchRun, args: argparse.Namespace) -> PipelineResults:
    topics = run.new_topics(signature_partitions=args.partitions)
    dsn = run.new_database("tally", "notify")
    sink, smtp_port, sink_stats = start_sink(run, "smtp-sink")
    tally_port, notify_port = free_port(), free_port()
    tally_env = tally_service_env(run, topics, dsn, tally_port)
    notify_settings = notify_extra(notify_port, smtp_port)
    if args.notify_rate_cap:
        notify_settings["CLAMEUR_NOTIFY_RATE_PER_S"] = str(args.notify_rate_cap)
    notify_env = service_env(run.infra, topic_prefix=topics.prefix, database_url=dsn, extra=notify_settings)
    tally = run.start("tally", [sys.executable, "-m", "tally"], tally_env)
    notify = run.start("notify", [sys.executable, "-m", "notify"], notify_env)
    env = intake_env(run.infra, topic_prefix=topics.prefix, partner_key=secrets.token_hex(16))
    intake, base = start_uvicorn(run, "intake", INTAKE_FACTORY, env, args.workers)
    tally_base, notify_base = f"http://127.0.0.1:{tally_port}", f"http://127.0.0.1:{notify_port}"
    tally.wait_http(f"{tally_base}/readyz", timeout_s=120)
    notify.wait_http(f"{notify_base}/readyz", timeout_s=120)
    intake.wait_http(f"{base}/readyz", timeout_s=120, consecutive=4 * args.workers)

    case_id = f"bench-pipeline-{run.run_id}"
    create_case(tally_base, case_id, [int(m) for m in args.milestones.split(",") if m.strip()])
    probes = wait_case_known(intake, base, case_id, args.workers)
    tally_before = scrape(f"{tally_base}/metrics")
    sampler = Sampler(f"{notify_base}/metrics", f"{tally_base}/metrics")
    sampler.start()
    try:
        load = run_wrk(
            base,
            "signatures.lua",
            connections=args.connections,
            duration_s=args.duration,
            env=signatures_env(case_id, run.run_id),
            log=run.folder / "wrk.log",
        )
        say(f"intake: {load.ok_per_s:,.0f} accepted/s, p50 {millis(load.p50_s)}, p99 {millis(load.p99_s)}")
        reasons, accepted = intake_rejections(base, args.workers, probes)
        run.children.stop(intake)
        on_topic = OnTopic()
        asyncio.run(read_topic(run.infra.kafka, topics.signatures, on_topic.reader(case_id)))
        say(
            f"signatures topic: {on_topic.records:,} records for the case "
            f"({len(on_topic.distinct):,} distinct)"
        )
        stored = wait_counted(dsn, case_id, len(on_topic.distinct), tally, args.drain_timeout)
        say(f"tally: {stored.total:,} counted, {stored.signatures:,} signatures stored")
        tally_after = scrape(f"{tally_base}/metrics")
        pending = wait_mail(f"{notify_base}/metrics", args.mail_window)
    finally:
        sampler.stop()
    run.children.stop(notify)
    run.children.stop(tally)
    run.children.stop(sink)
    mail = read_stats(sink_stats)

    reference, ref_base = start_reference(run, env, args)
    ref = run_wrk(
        ref_base,
        "signatures.lua",
        connections=args.connections,
        duration_s=args.reference_duration or min(args.duration, 60.0),
        env=signatures_env(case_id, run.run_id + "r"),
        log=run.folder / "wrk.log",
    )
    say(f"reference: {ref.ok_per_s:,.0f}/s")
    run.children.stop(reference)
    delta = subtract(tally_after, tally_before)
    return PipelineResults(
        load=load,
        reference=ref,
        reasons=reasons,
        intake_accepted=accepted,
        on_topic=on_topic,
        stored=stored,
        tally_delta=delta,
        milestones_emitted=total(delta, "clameur_tally_milestones_emitted_total"),
        emails=sampler.email_rate(),
        pending_mail=pending,
        max_lag=max((lag for _, lag in sampler.lag), default=0.0),
        wrk_ok_total=load.ok,
        mail_messages=int(mail.get("messages") or 0),
        mail_distinct=int(mail.get("distinct_message_ids") or 0),
    )


def exactness(results: PipelineResults) -> list[str]:
    """Every way the pipeline lost or double-counted; empty when exact."""
    problems: list[str] = []
    on_topic, stored = results.on_topic, results.stored
    distinct = len(on_topic.distinct)
    accepted = results.intake_accepted
    broker_refused = (results.reasons or {}).get("broker", 0.0)
    if accepted is not None:
        if accepted > on_topic.records:
            problems.append(
                f"intake acknowledged {accepted:,.0f} but only {on_topic.records:,} are on the topic"
            )
        # Extra records are only legitimate for 503s whose record reached the broker late.
        if on_topic.records > accepted + broker_refused:
            problems.append(
                f"{on_topic.records:,} records on the topic for {accepted:,.0f} acknowledged "
                f"and {broker_refused:,.0f} refused by the broker"
            )
    elif results.wrk_ok_total > on_topic.records:
        problems.append(
            f"wrk saw {results.wrk_ok_total:,} 202s but only {on_topic.records:,} are on the topic"
        )
    if stored.total != distinct:
        problems.append(f"tally counted {stored.total:,}, the topic holds {distinct:,} distinct signatures")
    if stored.signatures != stored.total:
        problems.append(f"tally stored {stored.signatures:,} signatures but its total is {stored.total:,}")
    if results.mail_distinct < results.mail_messages:
        problems.append(
            f"the SMTP sink received {results.mail_messages - results.mail_distinct:,} messages twice "
            "(same Message-ID)"
        )
    for dimension in ("country", "action"):
        if stored.by_dimension.get(dimension, 0) != stored.total:
            problems.append(f"{dimension} counters add up to {stored.by_dimension.get(dimension, 0):,}")
    return problems


def report_rows(results: PipelineResults, args: argparse.Namespace, problems: list[str]) -> list[Row]:
    load, ref = results.load, results.reference
    ratio = load.ok_per_s / ref.ok_per_s if ref.ok_per_s else 0.0
    delta = results.tally_delta
    p50 = histogram_quantile(delta, ACCEPT_TO_COUNTED, 0.50)
    p99 = histogram_quantile(delta, ACCEPT_TO_COUNTED, 0.99)
    counted = total(delta, f"{ACCEPT_TO_COUNTED}_count")
    within_1s = total(delta, f"{ACCEPT_TO_COUNTED}_bucket", le="1.0") / counted if counted else 0.0
    sent, seconds, email_rate = results.emails
    accepted = results.intake_accepted
    full_length = load.duration_s >= GOAL_DURATION_S - 1
    return [
        Row(
            f"accepted signatures/s, {load.duration_s:.0f} s at {args.connections} connections",
            per_second(load.ok_per_s) + ("" if full_length else " (shorter than the goal's 5 minutes)"),
            "≥ 4,000/s for 5 min",
            load.ok_per_s >= GOAL_RATE and full_length,
        ),
        Row("intake latency p50 / p99", f"{millis(load.p50_s)} / {millis(load.p99_s)}"),
        Row(
            "ratio to the bare FastAPI reference",
            f"{ratio:.2f} (reference {per_second(ref.ok_per_s)}, p99 {millis(ref.p99_s)}, services stopped)",
        ),
        Row(
            "rejections by reason",
            f"{describe_reasons(results.reasons)}; non-2xx at wrk {count(load.non_2xx)}, "
            f"timeouts {count(load.timeouts)}",
        ),
        Row(
            "accept-to-counted p50 / p99",
            f"{millis(p50)} / {millis(p99)} ({within_1s:.2%} within 1 s, from tally's histogram buckets)",
            "p99 ≤ 1 s",
            p99 is not None and within_1s >= 0.99,
        ),
        Row("tally's largest consumer lag seen (sampled each second)", f"{count(results.max_lag)} records"),
        Row(
            "emails for the milestones",
            f"milestones crossed: {count(results.milestones_emitted)}; "
            f"{count(sent)} emails in {seconds:.0f} s: {per_second(email_rate)}; "
            f"{count(results.pending_mail)} still pending when the bench stopped; "
            f"the sink received {count(results.mail_messages)} ({count(results.mail_distinct)} distinct)",
        ),
        Row(
            "every accepted signature counted exactly once",
            f"intake acknowledged {count(accepted) if accepted is not None else 'n/a'} "
            f"(wrk saw {count(results.wrk_ok_total)}); topic: {count(results.on_topic.records)} records, "
            f"{count(len(results.on_topic.distinct))} distinct; "
            f"tally: {count(results.stored.total)} counted, "
            f"{count(results.stored.signatures)} stored"
            + ("" if not problems else "; " + "; ".join(problems)),
            "exact",
            not problems,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    return run_measured("pipeline", parse_args(argv), measure, write_report)


def write_report(results: PipelineResults, args: argparse.Namespace, facts: MachineFacts) -> int:
    problems = exactness(results)
    rows = report_rows(results, args, problems)
    cap = f"{args.notify_rate_cap:g}/s" if args.notify_rate_cap else "notify's default"
    setup = [
        "everything on this one machine: Kafka and Postgres of the dev profile, tally (`python -m tally`), "
        "notify (`python -m notify`), intake (`uvicorn --factory intake.app:app_from_environment "
        f"--workers {args.workers}`), a counting SMTP sink, and wrk",
        f"a fresh topic prefix and database for the run; signatures.v2 with {args.partitions} partitions; "
        f"one case with milestones {args.milestones}; notify's rate cap: {cap}",
        f"wrk {args.connections} connections for {args.duration:.0f} s, `bench/wrk/signatures.lua`: unique "
        "emails, 30 countries, fr/en, about 25% consenting (each milestone mails about a quarter of "
        "its threshold)",
        INTAKE_SETUP,
        "accept-to-counted: tally's `clameur_tally_accept_to_counted_seconds`, bucket deltas from before the "
        "load to when tally had counted everything, interpolated inside buckets (as PromQL's "
        "histogram_quantile)",
        "exactness: intake's accepted counter (summed over its workers) against the records on the topic, "
        "against tally's stored counters and signatures for the case",
        "the reference runs after the services are stopped, with the same wrk script and connections",
    ]
    return report(
        "pipeline",
        title="The whole pipeline (`make bench`)",
        facts=facts,
        rows=rows,
        setup=setup,
        options=args,
        failed="; ".join(problems) if problems else None,
    )


if __name__ == "__main__":
    sys.exit(main())
