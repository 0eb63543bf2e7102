"""``make bench-notify``: a victory fanned out to 100,000 supporters, against the sink's own ceiling.

    python -m bench.notify [--supporters 100000]

1. The run's own topics and database (notify's schema migrated).
2. ``--supporters`` consenting signatures of one case on the signatures topic (the real
   path: notify's supporter consumer builds its list from them); notify started
   (``python -m notify``) and the bench waits until it recorded them all.
3. A ``VictoryDeclared`` on the case-events topic; notify fans it out and sends to a
   counting SMTP sink (``devstack/mailsink.py --stats``, its own process).  Sustained emails/s:
   messages / (last - first message at the sink).
4. The sink's ceiling in the same run: a fresh sink and a plain aiosmtplib sender over
   the same number of connections as notify's pool, messages of the same mean size.
5. Exactness: the sink received exactly one message per supporter (distinct recipients
   and Message-IDs) and notify counted them sent (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiosmtplib
from notify.settings import NotifySettings

from bench.common import (
    BenchError,
    Child,
    Row,
    Samples,
    by_label,
    count,
    free_port,
    machine_facts,
    per_second,
    port_open,
    report,
    say,
    scrape,
    total,
    wait_until,
)
from bench.infra import (
    BenchRun,
    add_run_arguments,
    bench_case,
    load_topic,
    notify_extra,
    publish_events,
    service_env,
)
from bench.synthetic import consenting_supporters
from clameur.events import VictoryDeclared
from clameur.settings import ClameurSettings
from devstack.mailsink import read_stats

GOAL_RATE = 800.0
GOAL_RATIO = 0.7


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = NotifySettings.model_fields
    parser = argparse.ArgumentParser(prog="python -m bench.notify", description=__doc__.split("\n")[0])
    parser.add_argument("--supporters", type=int, default=100_000)
    parser.add_argument(
        "--rate-cap",
        type=float,
        default=1_000_000.0,
        help="CLAMEUR_NOTIFY_RATE_PER_S for the run (the providers' cap; high: measure notify itself)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=int(defaults["notify_smtp_pool_size"].default),
        help="CLAMEUR_NOTIFY_SMTP_POOL_SIZE, and the ceiling sender's connections",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(defaults["notify_concurrency"].default),
        help="CLAMEUR_NOTIFY_CONCURRENCY",
    )
    parser.add_argument("--timeout", type=float, help="give up sending after this long (default: scaled)")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def start_sink(run: BenchRun, name: str, sample: Path | None = None) -> tuple[Child, int, Path]:
    port = free_port()
    stats = run.folder / f"{name}.json"
    command = [sys.executable, "-m", "devstack.mailsink", "--port", str(port), "--stats", str(stats)]
    if sample is not None:
        command += ["--sample", str(sample)]
    child = run.start(name, command, service_env(run.infra, topic_prefix=run.prefix))

    def listening() -> bool:
        child.check_alive()
        return port_open(port)

    wait_until(f"{name} on port {port}", listening, timeout_s=30)
    return child, port, stats


def sink_count(stats: Path, key: str = "messages") -> int:
    value = read_stats(stats).get(key)
    return int(value or 0)


def wait_recorded(notify: Child, metrics_url: str, supporters: int, timeout_s: float) -> float:
    """Wait until notify recorded every supporter; returns how long it took."""
    started = time.monotonic()

    def recorded() -> bool:
        notify.check_alive()
        return total(scrape(metrics_url), "clameur_notify_supporters_recorded_total") >= supporters

    wait_until(f"notify to record {supporters:,} supporters", recorded, timeout_s=timeout_s, every_s=0.5)
    return time.monotonic() - started


def wait_sent(notify: Child, stats: Path, supporters: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    while sink_count(stats) < supporters:
        notify.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"the sink received {sink_count(stats):,} of {supporters:,} within {timeout_s:.0f} s"
            )
        if time.monotonic() - last_report > 10:
            say(f"sink: {sink_count(stats):,} of {supporters:,} messages")
            last_report = time.monotonic()
        time.sleep(0.25)


def victory(case_id: str, supporters: int) -> VictoryDeclared:
    return VictoryDeclared(
        case_id=case_id,
        headline={"fr": "Nawal est libre !", "en": "Nawal is free!"},
        message={
            "fr": "Grâce à vous, Nawal Benaissa a été libérée ce matin. Merci à chacune et chacun.",
            "en": "Thanks to you, Nawal Benaissa was released this morning. Thank you all.",
        },
        total=supporters,
        case_title={"fr": "Libérez Nawal Benaissa", "en": "Free Nawal Benaissa"},
        default_locale="fr",
    )


def sampled_message(sample: Path) -> bytes:
    """The first email notify sent in this run, as the sink received it.

    The ceiling sends these very bytes: aiosmtpd reads DATA a line at a time, so what a
    message costs the sink depends on its lines, not only its size (an EmailMessage of
    the same size had 46 lines where notify's have about 67).
    """
    try:
        body = sample.read_bytes()
    except OSError as error:
        raise BenchError(f"the sink kept no message of notify's in {sample}") from error
    if not body:
        raise BenchError(f"the sink kept an empty message in {sample}")
    return body


async def send_ceiling(port: int, connections: int, messages: int, body: bytes) -> float:
    """Send ``messages`` over ``connections`` reused connections as fast as the sink takes them."""
    per_connection = [
        messages // connections + (1 if n < messages % connections else 0) for n in range(connections)
    ]

    async def sender(n: int, quota: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False, timeout=60)
        await smtp.connect()
        try:
            for i in range(quota):
                await smtp.sendmail("news@clameur.localhost", [f"c{n}.{i}@bench.invalid"], body)
        finally:
            await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(sender(n, quota) for n, quota in enumerate(per_connection) if quota))
    return time.perf_counter() - started


def rate_at_sink(stats: Path) -> float:
    found = read_stats(stats)
    messages = int(found.get("messages") or 0)
    first, last = found.get("first_at"), found.get("last_at")
    if messages < 2 or first is None or last is None or last <= first:
        return 0.0
    return (messages - 1) / (float(last) - float(first))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = machine_facts()
    supporters = args.supporters
    timeout_s = args.timeout or max(300.0, supporters / 50)
    try:
        with BenchRun.open("notify", keep=args.keep, keep_infra=args.keep_infra) as run:
            topics = run.new_topics()
            dsn = run.new_database("notify")
            case_id = f"bench-notify-{run.run_id}"
            asyncio.run(publish_events(run.infra.kafka, topics.cases, [(case_id, bench_case(case_id))]))
            secret = ClameurSettings().secret.get_secret_value().encode()
            started = time.perf_counter()
            asyncio.run(
                load_topic(
                    run.infra.kafka,
                    topics.signatures,
                    consenting_supporters(
                        case_id=case_id, run_id=run.run_id, count=supporters, secret=secret
                    ),
                )
            )
            say(f"{supporters:,} consenting signatures on the topic in {time.perf_counter() - started:.1f} s")

            sample = run.folder / "sample.eml"
            sink, smtp_port, stats = start_sink(run, "smtp-sink", sample)
            port = free_port()
            env = service_env(
                run.infra,
                topic_prefix=topics.prefix,
                database_url=dsn,
                extra={
                    **notify_extra(port, smtp_port),
                    "CLAMEUR_NOTIFY_RATE_PER_S": str(args.rate_cap),
                    "CLAMEUR_NOTIFY_SMTP_POOL_SIZE": str(args.pool_size),
                    "CLAMEUR_NOTIFY_CONCURRENCY": str(args.concurrency),
                },
            )
            notify = run.start("notify", [sys.executable, "-m", "notify"], env)
            base = f"http://127.0.0.1:{port}"
            notify.wait_http(f"{base}/readyz", timeout_s=120)
            recorded_s = wait_recorded(notify, f"{base}/metrics", supporters, timeout_s)
            say(f"notify recorded {supporters:,} supporters in {recorded_s:.1f} s")

            before: Samples = scrape(f"{base}/metrics")
            declared = time.time()
            asyncio.run(
                publish_events(run.infra.kafka, topics.case_events, [(case_id, victory(case_id, supporters))])
            )
            say("victory declared; waiting for the emails...")
            wait_sent(notify, stats, supporters, timeout_s)
            time.sleep(3.0)  # anything sent twice arrives now
            after: Samples = scrape(f"{base}/metrics")
            received = read_stats(stats)
            run.children.stop(notify)
            run.children.stop(sink)
            notify_rate = rate_at_sink(stats)
            mean_size = int(received.get("bytes") or 0) // max(1, int(received.get("messages") or 1))
            first_at = float(received.get("first_at") or declared)
            last_at = float(received.get("last_at") or declared)
            say(f"notify: {notify_rate:,.0f} emails/s sustained, mean size {mean_size:,} bytes")

            ceiling_sink, ceiling_port, ceiling_stats = start_sink(run, "ceiling-sink")
            elapsed = asyncio.run(
                send_ceiling(ceiling_port, args.pool_size, supporters, sampled_message(sample))
            )
            time.sleep(0.6)  # the sink's last stats write
            ceiling_rate = rate_at_sink(ceiling_stats)
            ceiling_messages = sink_count(ceiling_stats)
            run.children.stop(ceiling_sink)
            say(
                f"ceiling: {ceiling_rate:,.0f} emails/s at the sink "
                f"({supporters / elapsed:,.0f}/s at the sender)"
            )
    except BenchError as error:
        say(f"error: {error}")
        return 2

    messages = int(received.get("messages") or 0)
    distinct_recipients = int(received.get("distinct_recipients") or 0)
    distinct_ids = int(received.get("distinct_message_ids") or 0)
    sent = total(after, "clameur_notify_emails_sent_total") - total(
        before, "clameur_notify_emails_sent_total"
    )
    failed = by_label(after, "clameur_notify_emails_failed_total", "reason")
    exact = messages == supporters and distinct_recipients == supporters and distinct_ids == supporters
    exact = exact and int(sent) == supporters and ceiling_messages == supporters
    ratio = notify_rate / ceiling_rate if ceiling_rate else 0.0
    rows = [
        Row(
            "emails/s sustained (first to last message at the sink)",
            per_second(notify_rate),
            "≥ 800/s",
            notify_rate >= GOAL_RATE,
        ),
        Row(
            "ratio to the sink's ceiling",
            f"{ratio:.2f} (ceiling {per_second(ceiling_rate)}, aiosmtplib over {args.pool_size} connections)",
            f"≥ {GOAL_RATIO}",
            ratio >= GOAL_RATIO,
        ),
        Row(
            "victory declared to first / last email",
            f"{first_at - declared:.1f} s / {last_at - declared:.1f} s",
        ),
        Row(
            "one email per supporter",
            f"{count(messages)} messages, {count(distinct_recipients)} distinct recipients, "
            f"{count(distinct_ids)} distinct Message-IDs, notify counted {count(sent)} sent "
            f"(failed: {', '.join(f'{k} {count(v)}' for k, v in sorted(failed.items())) or 'none'}) "
            f"for {count(supporters)} supporters",
            "exactly one each",
            exact,
        ),
        Row("supporter list built from signatures.v2", f"{count(supporters)} in {recorded_s:.1f} s"),
    ]
    setup = [
        f"{count(supporters)} consenting supporters of one case put on a fresh signatures topic and recorded "
        "by notify's own consumer (the real path), then one `VictoryDeclared` on case-events",
        f"notify: `python -m notify`, a fresh database; `CLAMEUR_NOTIFY_RATE_PER_S={args.rate_cap:.0f}` (the "
        f"providers' cap, set out of the way), `CLAMEUR_NOTIFY_SMTP_POOL_SIZE={args.pool_size}`, "
        f"`CLAMEUR_NOTIFY_CONCURRENCY={args.concurrency}`, other settings at their defaults",
        "SMTP sink: `devstack/mailsink.py --stats` (aiosmtpd, its own process, counts and keeps nothing); "
        f"messages of {mean_size:,} bytes on average",
        f"ceiling: a fresh sink, `aiosmtplib.SMTP.sendmail` over {args.pool_size} reused connections, from "
        f"one process, of {count(supporters)} copies of the first email notify sent in this run (the sink "
        "reads DATA line by line: a message's cost to it depends on its lines, not only its size)",
    ]
    return report(
        "notify",
        title="Notify (`make bench-notify`)",
        facts=facts,
        rows=rows,
        setup=setup,
        options=args,
        failed=None if exact else "not exactly one email per supporter",
    )


if __name__ == "__main__":
    sys.exit(main())
