"""Helpers every test suite shares: free ports, waiting, service processes, settings, metrics, topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings

from clameur.kafka import Kafka, kafka_admin
from clameur.topics import Topics
from devstack.processes import free_port as free_port  # the tests import it from here
from devstack.processes import poll

ROOT = Path(__file__).resolve().parent.parent


PRODUCTION: dict[str, Any] = {
    "env": "production",
    "secret": "s" * 64,
    "admin_token": "a" * 48,
    "database_url": "postgresql://clameur@db.example.org:5432/clameur?sslmode=verify-full",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_username": "intake",
    "kafka_password": "p" * 32,
    "public_url": "https://petitions.example.org",
}
"""Settings (keyword arguments) that pass every production check: a test of one check
overrides only the value it is about, so another check cannot answer in its place."""


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail the test with ``what`` after ``timeout`` s."""
    if not poll(predicate, timeout=timeout, every=interval):
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


async def eventually(
    predicate: Callable[[], Awaitable[bool]], within: float = 30.0, interval: float = 0.1, what: str = ""
) -> None:
    """Async :func:`wait_until`: poll ``predicate`` until true, fail after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within} s waiting for {what or predicate}")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback test URL
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


class ServiceProcess:
    """``python -m <service>`` as a child process on a free port, its output in a log file."""

    def __init__(self, service: str, env: Mapping[str, str], log_dir: Path, port: int | None = None) -> None:
        self.service = service
        self.port = port or free_port()
        self.env = {**env, f"CLAMEUR_{service.upper()}_PORT": str(self.port)}
        self.log = log_dir / f"{service}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.service],
                env=dict(self.env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.service} exited with {self.process.returncode}:\n{self.tail()}")
            if http_status(f"{self.url}/readyz") == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.service} not ready after {timeout} s:\n{self.tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL, timeout: float = 40.0) -> int | None:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def stop(self) -> int | None:
        return self.kill(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def base_env() -> dict[str, str]:
    """The parent's environment less any CLAMEUR_* settings (tests set their own)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("CLAMEUR_")}


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def settings_from(kind: type[SettingsT], env: Mapping[str, str], **overrides: Any) -> SettingsT:
    """A service's settings from ``env``'s ``CLAMEUR_*`` variables alone, then ``overrides`` by field.

    The test process's own environment is not read, so a test sees only what it set.
    """
    fields: dict[str, Any] = {
        key.removeprefix("CLAMEUR_").lower(): value
        for key, value in env.items()
        if key.startswith("CLAMEUR_")
    }
    fields.update(overrides)
    return kind.model_validate(fields)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the samples named ``name`` whose labels include ``labels``, summed (0 if none).

    ``text`` is a Prometheus text exposition, read by prometheus_client's own parser.
    """
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    )


async def read_topic(bootstrap: str, topic: str, *, at_least: int = 0, within: float = 10.0) -> list[Any]:
    """Every record on ``topic`` from its start.

    Waits up to ``within`` s for ``at_least`` records, then reads a little longer, to see a
    duplicate that should not be there.  With ``at_least=0`` it reads for a short moment
    and returns what is there (to show that nothing was published).  The topic must exist.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []

    async def fetch(timeout_ms: int = 200) -> None:
        for batch in (await consumer.getmany(timeout_ms=timeout_ms)).values():
            records.extend(batch)

    try:
        assert topic in await consumer.topics(), f"no topic {topic}"
        # No consumer group: the consumer takes every partition itself, from the start.
        consumer.subscribe([topic])
        loop = asyncio.get_running_loop()
        assigned_by = loop.time() + 10.0
        while not consumer.assignment():
            assert loop.time() < assigned_by, f"no partition of {topic} assigned"
            await fetch(100)
        deadline = loop.time() + (within if at_least else 1.0)
        while loop.time() < deadline and not (at_least and len(records) >= at_least):
            await fetch()
        if at_least:
            await fetch(300)
        return records
    finally:
        await consumer.stop()


async def delete_topics(bootstrap: Kafka, topics: Topics) -> None:
    """Delete a test's topics, best effort: a topic already gone, or a broker that refuses, is no failure."""
    async with kafka_admin(bootstrap) as admin:
        with suppress(Exception):
            await admin.delete_topics([spec.name for spec in topics.specs()])
