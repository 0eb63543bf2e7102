"""What every bench shares: the machine's facts, wrk, child processes, metrics, the report.

- :func:`machine_facts`: cores, memory, CPU model, git revision, date and load average,
  printed with every result so a number is never read without its machine.
- :func:`run_wrk`: Debian's ``wrk`` with one of the Lua scripts of ``bench/wrk``; the
  script's ``done()`` prints one ``BENCH_RESULT {json}`` line that is parsed into a
  :class:`WrkResult` (requests, duration, latency percentiles, errors).
- :class:`Child`: a process started in its own session on a free loopback port, stopped
  by its own process id (its process group: uvicorn's workers go with their parent).
- :func:`parse_metrics` and :func:`histogram_quantile`: Prometheus text scraped before
  and after a run, and quantiles computed from the bucket deltas.
- :func:`write_section`: each bench rewrites only its own part of docs/benchmarks.md,
  between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from devstack import processes
from devstack.processes import free_port as free_port  # the benches import it from here

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
BENCH_CACHE = ROOT / ".cache" / "bench"
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
WRK = "/usr/bin/wrk"


class BenchError(RuntimeError):
    """The bench cannot go on (a service did not start, wrk failed); the message says why."""


def say(message: str) -> None:
    """Progress for the person running the bench (stderr keeps stdout for results)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def new_run_id() -> str:
    """A short id, unique enough per run, usable in topic names, database names and emails."""
    return time.strftime("%m%d%H%M%S") + os.urandom(2).hex()


def run_dir(bench: str, run_id: str) -> Path:
    """Where a run keeps its logs and scratch files (git-ignored)."""
    path = BENCH_CACHE / f"{bench}-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the machine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineFacts:
    cores: int
    memory_gib: float
    cpu_model: str
    git_revision: str
    date: str
    load_average: tuple[float, float, float]
    python: str

    def describe(self) -> str:
        load = ", ".join(f"{value:.2f}" for value in self.load_average)
        return (
            f"{self.cores} cores ({self.cpu_model}), {self.memory_gib:.1f} GiB memory, "
            f"git {self.git_revision}, Python {self.python}, {self.date}; load average at start {load}"
        )


def machine_facts() -> MachineFacts:
    """The facts that go with every number: what ran where, and how busy the machine was."""
    return MachineFacts(
        cores=cores(),
        memory_gib=_memory_gib(),
        cpu_model=_cpu_model(),
        git_revision=git_revision(),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_average=os.getloadavg(),
        python=platform.python_version(),
    )


def cores() -> int:
    """The cores this process may run on (what ``nproc`` says)."""
    return len(os.sched_getaffinity(0)) or 1


def _memory_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    """``git rev-parse --short HEAD``, with ``+changes`` when the work tree differs from it."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{revision}+changes" if dirty else revision


# -- wrk ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured.  Latencies in seconds; ``non_2xx`` counts statuses >= 400."""

    requests: int
    duration_s: float
    non_2xx: int
    timeouts: int
    socket_errors: int
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float
    statuses: dict[int, int] = field(default_factory=dict)
    accepted_items: int = 0
    """Bulk only: the sum of ``accepted`` over the 202 answers."""
    server_cpu_s: float | None = None
    """CPU seconds the server's processes spent during the run, when the bench measured it."""
    broker_cpu_s: float | None = None
    """CPU seconds the Kafka broker spent during the run, when the bench measured it."""

    def cpu_us_per_ok(self, seconds: float | None) -> float | None:
        """``seconds`` (one of the CPU times above) per 2xx answer, in microseconds."""
        return None if seconds is None or not self.ok else seconds / self.ok * 1e6

    @property
    def ok(self) -> int:
        """Answers with a 2xx (or 3xx) status: for intake, the 202s."""
        return self.requests - self.non_2xx

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def wrk_threads(connections: int) -> int:
    """One wrk thread per core, never more than connections."""
    return max(1, min(connections, cores()))


def run_wrk(
    url: str,
    script: str,
    *,
    connections: int,
    duration_s: float,
    env: Mapping[str, str],
    timeout_s: float = 10.0,
    log: Path | None = None,
) -> WrkResult:
    """Run ``wrk`` with ``bench/wrk/<script>`` against ``url`` and parse its ``BENCH_RESULT``.

    ``env`` carries the script's ``BENCH_*`` settings.  Raises :class:`BenchError` if wrk
    fails or prints no result.
    """
    if not Path(WRK).exists():
        raise BenchError("wrk is missing: apt-get install wrk (Debian's package)")
    threads = wrk_threads(connections)
    argv = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(WRK_SCRIPTS / script),
        url,
    ]
    child_env = {
        **os.environ,
        **env,
        "BENCH_LUA_DIR": str(WRK_SCRIPTS),
        "BENCH_THREADS": str(threads),
    }
    say(f"wrk: {shlex.join(argv[1:])}")
    completed = subprocess.run(
        argv, env=child_env, capture_output=True, text=True, timeout=duration_s + 120, check=False
    )
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n{completed.stdout}\n{completed.stderr}\n")
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return parse_wrk_result(orjson.loads(line.removeprefix("BENCH_RESULT ")))
    raise BenchError(f"wrk printed no BENCH_RESULT line:\n{completed.stdout}\n{completed.stderr}")


def parse_wrk_result(raw: Mapping[str, Any]) -> WrkResult:
    """The JSON of ``bench/wrk/report.lua``'s ``done()`` (microseconds) as a :class:`WrkResult`."""
    errors = raw["errors"]
    latency = raw["latency_us"]
    return WrkResult(
        requests=int(raw["requests"]),
        duration_s=float(raw["duration_us"]) / 1e6,
        non_2xx=int(errors["status"]),
        timeouts=int(errors["timeout"]),
        socket_errors=int(errors["connect"]) + int(errors["read"]) + int(errors["write"]),
        p50_s=float(latency["p50"]) / 1e6,
        p90_s=float(latency["p90"]) / 1e6,
        p99_s=float(latency["p99"]) / 1e6,
        max_s=float(latency["max"]) / 1e6,
        statuses={int(status): int(count) for status, count in raw.get("statuses", {}).items()},
        accepted_items=int(raw.get("accepted_items", 0)),
    )


# -- child processes ------------------------------------------------------------------------------


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and of its descendants now alive (Linux ``/proc``).

    A process's ``stat`` holds the time of all its threads; a child that ended is not seen.
    """
    seconds = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue  # ended meanwhile
        # After the command's ")": state is field 3, utime field 14, stime field 15.
        seconds += (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS
        pending += [int(child) for child in children]
    return seconds


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` of this machine (``ss``), or None."""
    try:
        listing = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"pid=(\d+)", listing)
    return int(found.group(1)) if found else None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    return processes.port_open(host, port)


def wait_until(what: str, ready: Callable[[], bool], *, timeout_s: float, every_s: float = 0.2) -> None:
    """Poll ``ready`` until it is true; :class:`BenchError` after ``timeout_s``."""
    if not processes.poll(ready, timeout=timeout_s, every=every_s):
        raise BenchError(f"{what}: not within {timeout_s:.0f} s")


@dataclass
class Child:
    """A process the bench started: own session, output to a log file, stopped by its pid."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    # Where it runs: this checkout, or another one (an older revision measured beside it).
    cwd: Path = ROOT

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            env=dict(self.env),
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        say(f"{self.name}: started (pid {self.process.pid}, log {self.log_path})")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited early; the end of its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_http(self, url: str, *, timeout_s: float = 90.0, consecutive: int = 1) -> None:
        """Wait for ``consecutive`` 200 answers in a row from ``url`` (one per worker, say)."""
        streak = 0

        def ready() -> bool:
            nonlocal streak
            self.check_alive()
            streak = streak + 1 if http_status(url) == 200 else 0
            return streak >= consecutive

        wait_until(f"{self.name} at {url}", ready, timeout_s=timeout_s, every_s=0.1)

    def stop(self, *, timeout_s: float = 40.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal the child's process group and wait; SIGKILL after ``timeout_s``."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name}: did not stop within {timeout_s:.0f} s; SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        else:
            # The leader is gone; make sure nothing of its group outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode


class Children:
    """The processes of one run, stopped in reverse order of start, whatever happened."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *, cwd: Path = ROOT
    ) -> Child:
        child = Child(name, argv, env, log_path, cwd=cwd)
        self._children.append(child)
        return child.start()

    def stop(self, child: Child) -> None:
        child.stop()
        with contextlib.suppress(ValueError):
            self._children.remove(child)

    def stop_all(self) -> None:
        while self._children:
            child = self._children.pop()
            try:
                child.stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the others
                say(f"{child.name}: stopping failed: {error}")
            else:
                say(f"{child.name}: stopped")


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


def uvicorn_argv(factory: str, *, port: int, workers: int, python: str = sys.executable) -> list[str]:
    """The one uvicorn command line used for intake and the reference alike (same server setup).

    ``python``: another checkout's interpreter, to serve that checkout the same way.
    """
    return [
        python,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        # As `python -m intake` runs: intake alone decides whom to believe in X-Forwarded-For.
        "--no-proxy-headers",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "30",
    ]


# -- Prometheus metrics ----------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text page: ``(name, sorted labels) -> value``."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """``GET url`` (a ``/metrics``) on a new connection, parsed."""
    with httpx.Client(timeout=timeout_s) as client:
        response = client.get(url)
        response.raise_for_status()
        return parse_metrics(response.text)


def _worker_key(samples: Samples) -> tuple[tuple[tuple[str, Labels], float], ...]:
    # prometheus_client's ``*_created`` samples are when each metric was made: a constant
    # of the process that differs between workers, whatever their counts.  Only intake's
    # own metrics, whose children are all made at start: an HTTP metric's child appears
    # with the first request of its route and status, which would change the key.
    return tuple(
        sorted(
            (key, value)
            for key, value in samples.items()
            if key[0].startswith("clameur_intake_") and key[0].endswith("_created")
        )
    )


def _worker_counts(samples: Samples) -> tuple[tuple[tuple[str, Labels], float], ...]:
    # What the load moved; the scrapes themselves (GET /metrics) are left out.
    return tuple(
        sorted(
            (key, value)
            for key, value in samples.items()
            if not key[0].endswith("_created")
            and (
                key[0].startswith("clameur_intake_")
                or (key[0] == "clameur_http_requests_total" and dict(key[1]).get("method") != "GET")
            )
        )
    )


def scrape_workers(url: str, workers: int, *, timeout_s: float = 30.0) -> list[Samples] | None:
    """One settled ``/metrics`` page per uvicorn worker, once the load is over.

    With ``--workers N`` each worker has its own registry and the kernel hands each new
    connection to one of them, so one scrape sees one worker.  Pages are told apart by
    the metrics' creation times (per process); a worker is settled when two of its pages
    in a row show the same counts (requests still in flight when the load stopped have
    finished).  ``None`` when not every worker was seen settled within ``timeout_s``.
    """
    latest: dict[tuple[tuple[tuple[str, Labels], float], ...], Samples] = {}
    settled: set[tuple[tuple[tuple[str, Labels], float], ...]] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(url)
        worker = _worker_key(samples)
        previous = latest.get(worker)
        if previous is not None and _worker_counts(previous) == _worker_counts(samples):
            settled.add(worker)
        else:
            settled.discard(worker)
        latest[worker] = samples
        if len(latest) > workers:
            return None  # more processes than workers: not uvicorn's workers
        if len(settled) == workers:
            return [latest[worker] for worker in settled]
        time.sleep(0.05)
    return None


def summed(pages: Iterable[Samples]) -> Samples:
    result: Samples = {}
    for page in pages:
        for key, value in page.items():
            result[key] = result.get(key, 0.0) + value
    return result


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= set(sample_labels)
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s samples summed per value of ``label``."""
    found: dict[str, float] = {}
    for (sample, sample_labels), value in samples.items():
        if sample != name:
            continue
        key = dict(sample_labels).get(label, "")
        found[key] = found.get(key, 0.0) + value
    return found


def subtract(after: Samples, before: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def histogram_quantile(samples: Samples, name: str, quantile: float) -> float | None:
    """The ``quantile`` of histogram ``name`` (e.g. a delta of two scrapes), like PromQL's.

    Linear interpolation inside the bucket that holds the rank; ``None`` when empty.  A
    rank in the ``+Inf`` bucket answers the highest finite bound (a floor, said as such
    by the caller).
    """
    buckets: list[tuple[float, float]] = []
    for (sample, labels), value in samples.items():
        if sample == f"{name}_bucket":
            le = dict(labels)["le"]
            buckets.append((math.inf if le in ("+Inf", "inf") else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    count = buckets[-1][1]
    rank = quantile * count
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            if cumulative == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = bound, cumulative
    return lower_bound


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of a results table; ``passed`` is ``None`` for a measure without a goal."""

    measure: str
    value: str
    goal: str = ""
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("pass" if self.passed else "**FAIL**")


def table(rows: Iterable[Row]) -> str:
    lines = ["| measure | value | goal | result |", "|---|---|---|---|"]
    lines += [f"| {row.measure} | {row.value} | {row.goal} | {row.verdict} |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this bench was run, as a person would type it."""
    module = sys.modules["__main__"].__spec__
    name = module.name if module is not None else Path(sys.argv[0]).stem
    return shlex.join(["python", "-m", name, *sys.argv[1:]])


def section(
    *,
    title: str,
    facts: MachineFacts,
    rows: Sequence[Row],
    setup: Sequence[str],
    notes: Sequence[str] = (),
) -> str:
    """A bench's section of docs/benchmarks.md: what ran where, the table, then the setup."""
    parts = [
        f"## {title}",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {facts.describe()}.",
        "",
        table(rows),
        "",
        "Setup:",
        "",
        *[f"- {line}" for line in setup],
    ]
    if notes:
        parts += ["", "Notes:", "", *[f"- {line}" for line in notes]]
    return "\n".join(parts) + "\n"


_HEADER = """# Benchmarks

Each section below is written by its bench (`make bench-intake`, `make bench-tally`,
`make bench-notify`, `make bench`): the numbers, the command, the machine, the git
revision and the goal of the issue it answers.  A bench rewrites only its own section,
between its `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers; do not
edit inside them by hand.  Everything runs on one machine over loopback, so the load
generator, the broker, the database and the services share the same cores.
"""


SECTIONS = ("intake", "tally", "notify", "pipeline", "confirmation", "overload")
"""The sections in the order a new docs/benchmarks.md lists them."""


def _new_document() -> str:
    blocks = [
        f"<!-- bench:{name}:start -->\n_Not measured yet: `python -m bench.{name}`._\n"
        f"<!-- bench:{name}:end -->"
        for name in SECTIONS
    ]
    return _HEADER + "\n" + "\n\n".join(blocks) + "\n"


def write_section(name: str, content: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME:start/end -->`` in ``path``."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{content.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else _new_document()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    say(f"results written to {path} (section {name!r})")


def per_second(value: float) -> str:
    return f"{value:,.0f}/s"


def millis(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:,.1f} ms"


def count(value: float) -> str:
    return f"{value:,.0f}"


def report(
    name: str,
    *,
    title: str,
    facts: MachineFacts,
    rows: Sequence[Row],
    setup: Sequence[str],
    options: argparse.Namespace,
    failed: str | None = None,
    details: Sequence[str] = (),
) -> int:
    """The end of every bench: its section (unless ``--no-write``), its rows, its exit status.

    ``failed`` says which exactness check failed (exit 1, with ``details`` below it);
    ``--strict`` also fails on a missed goal.  ``options`` are the run arguments of
    :func:`bench.infra.add_run_arguments`.
    """
    if not options.no_write:
        write_section(name, section(title=title, facts=facts, rows=rows, setup=setup, notes=options.note))
    for row in rows:
        print(f"{row.measure}: {row.value} {row.goal} {row.verdict}")
    if failed is not None:
        say(f"FAILED: {failed}")
        for detail in details:
            say(f"  {detail}")
        return 1
    if options.strict and any(row.passed is False for row in rows):
        return 1
    return 0
