"""The whole local stack of one profile: Kafka, Postgres, the mail sink, Prometheus, the services."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clameur.acls import create_acls, service_grants
from clameur.database import migrate
from clameur.kafka import Kafka
from clameur.topics import Topics, ensure_topics
from devstack import demo_page
from devstack.kafka import LocalKafka
from devstack.kafka_security import BrokerSecurity
from devstack.layout import ROOT, Profile
from devstack.postgres import LocalPostgres, apt_install
from devstack.processes import Managed, StackError, port_open, refuse_taken_port, wait_for

SERVICES = ("intake", "tally", "notify")
SCHEMAS = ("tally", "notify")
PASSED_THROUGH = (
    "CLAMEUR_KAFKA",
    "CLAMEUR_DATABASE_URL",
    "CLAMEUR_SMTP_URL",
    "CLAMEUR_ADMIN_TOKEN",
    "CLAMEUR_SECRET",
    "CLAMEUR_PUBLIC_URL",
)

# The demo page's widget key: public, and only good for the demo page's own origin.
DEMO_WIDGET_KEY = "pk_dev_demo"


@dataclass(frozen=True)
class Stack:
    profile: Profile
    environ: Mapping[str, str]

    @property
    def kafka(self) -> LocalKafka:
        p = self.profile
        return LocalKafka(
            "kafka",
            p.kafka_port,
            p.controller_port,
            p.kafka_data,
            p.run_dir,
            p.log_dir,
            cleaner_backoff_ms=p.kafka_cleaner_backoff_ms,
            retention_check_interval_ms=p.kafka_retention_check_interval_ms,
            security=BrokerSecurity(p.kafka_security) if p.kafka_secure else None,
        )

    @property
    def postgres(self) -> LocalPostgres:
        p = self.profile
        return LocalPostgres(
            p.postgres_data, p.postgres_port, p.log_dir / "postgres.log", durable=p.name != "test"
        )

    @property
    def mailsink(self) -> Managed:
        return Managed("mailsink", self.profile.run_dir, self.profile.log_dir)

    @property
    def prometheus(self) -> Managed:
        return Managed("prometheus", self.profile.run_dir, self.profile.log_dir)

    @property
    def demopage(self) -> Managed:
        return Managed("demopage", self.profile.run_dir, self.profile.log_dir)

    @property
    def demo_page_origins(self) -> list[str]:
        port = self.profile.demo_page_port
        return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]

    def service(self, name: str) -> Managed:
        return Managed(name, self.profile.run_dir, self.profile.log_dir)

    # What comes from the caller's environment is used as it is, and not started here.
    @property
    def external_kafka(self) -> bool:
        return "CLAMEUR_KAFKA" in self.environ

    @property
    def external_database(self) -> bool:
        return "CLAMEUR_DATABASE_URL" in self.environ

    @property
    def external_smtp(self) -> bool:
        return "CLAMEUR_SMTP_URL" in self.environ

    @property
    def kafka_bootstrap(self) -> str:
        return self.environ.get("CLAMEUR_KAFKA", self.kafka.bootstrap)

    @property
    def database_url(self) -> str:
        return self.environ.get("CLAMEUR_DATABASE_URL", self.postgres.dsn)

    def service_env(self) -> dict[str, str]:
        p = self.profile
        env = dict(os.environ)
        env.update(
            {
                "CLAMEUR_ENV": self.environ.get("CLAMEUR_ENV", "dev"),
                "CLAMEUR_KAFKA": self.kafka_bootstrap,
                "CLAMEUR_DATABASE_URL": self.database_url,
                "CLAMEUR_SMTP_URL": self.environ.get("CLAMEUR_SMTP_URL", f"smtp://127.0.0.1:{p.smtp_port}"),
                "CLAMEUR_PUBLIC_URL": self.environ.get(
                    "CLAMEUR_PUBLIC_URL", f"http://127.0.0.1:{p.notify_port}"
                ),
                "CLAMEUR_INTAKE_PORT": str(p.intake_port),
                "CLAMEUR_TALLY_PORT": str(p.tally_port),
                "CLAMEUR_NOTIFY_PORT": str(p.notify_port),
            }
        )
        # Locally, the demo and benchmarks stand in for a load balancer on loopback:
        # supporters are told apart by the X-Forwarded-For it sets.
        env.setdefault("CLAMEUR_TRUSTED_PROXIES", '["127.0.0.1/32"]')
        # The widget: the demo page's origin may sign; counts are read from the local tally.
        env.setdefault("CLAMEUR_WIDGET_KEYS", json.dumps({DEMO_WIDGET_KEY: self.demo_page_origins}))
        env.setdefault("CLAMEUR_PUBLIC_READS_URL", f"http://127.0.0.1:{p.tally_port}")
        for name in PASSED_THROUGH:
            if name in self.environ:
                env[name] = self.environ[name]
        return env

    def service_port(self, name: str) -> int:
        return {
            "intake": self.profile.intake_port,
            "tally": self.profile.tally_port,
            "notify": self.profile.notify_port,
        }[name]

    # --- infrastructure -------------------------------------------------------------------------

    def kafka_access(self, user: str = "admin") -> Kafka:
        """How ``user`` reaches this stack's Kafka: the bare address, unless the broker is secure."""
        security = self.kafka.security
        if security is None or self.external_kafka:
            return self.kafka_bootstrap
        return security.access(self.kafka_bootstrap, user)

    def start_infrastructure(self) -> None:
        """Kafka and Postgres (unless given), topics created (and ACLs, when secure), schemas migrated."""
        if not self.external_kafka:
            self.kafka.start()
        if not self.external_database:
            self.postgres.start()
        asyncio.run(ensure_topics(self.kafka_access(), Topics()))
        if self.kafka.security is not None and not self.external_kafka:
            grants = service_grants(Topics(), tally_group="tally", notify_groups="notify-")
            asyncio.run(create_acls(self.kafka_access(), grants))
        for schema in SCHEMAS:
            if (ROOT / "services" / schema / "migrations").is_dir():
                migrate(schema, self.database_url)

    def start_mailsink(self) -> None:
        if self.external_smtp or self.mailsink.running():
            return
        port = self.profile.smtp_port
        refuse_taken_port(port, instead="point CLAMEUR_SMTP_URL at it")
        mail_dir = self.profile.mail_dir
        argv = [sys.executable, "-m", "devstack.mailsink", "--port", str(port), "--dir", str(mail_dir)]
        start_listening("the mail sink", self.mailsink, argv, port)

    def start_prometheus(self) -> None:
        if self.prometheus.running():
            return
        if shutil.which("prometheus") is None:
            if os.geteuid() != 0:
                raise StackError("Prometheus is missing: sudo apt-get install -y prometheus")
            print("prometheus: installing Debian's prometheus (once)...", flush=True)
            apt_install("prometheus")
        config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
        if not config.exists():
            print(f"prometheus: skipped, {config} is missing", flush=True)
            return
        port = self.profile.prometheus_port
        argv = [
            "prometheus",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={self.profile.prometheus_data}",
            "--storage.tsdb.retention.time=7d",
        ]
        start_listening("Prometheus", self.prometheus, argv, port, cwd=config.parent, timeout=30)

    # --- services -------------------------------------------------------------------------------

    def start_services(self, *, timeout: float = 120.0) -> None:
        for name in SERVICES:
            if not (ROOT / "services" / name / "__main__.py").exists():
                print(f"{name}: not built yet, skipped", flush=True)
                continue
            if not self.service(name).running():
                env = {**self.service_env(), **kafka_login_env(self.kafka_access(name))}
                self.service(name).start([sys.executable, "-m", name], env=env, cwd=ROOT)
        for name in SERVICES:
            if (ROOT / "services" / name / "__main__.py").exists():
                url = f"http://127.0.0.1:{self.service_port(name)}/readyz"
                wait_for(
                    f"{name} ({url})",
                    functools.partial(http_ok, url),
                    timeout=timeout,
                    log=self.service(name).log,
                )

    def start_demo_page(self) -> None:
        """The campaign page of ``make demo``'s cases, on its own origin (see devstack.demo_page)."""
        if self.demopage.running():
            return
        port = self.profile.demo_page_port
        if port_open("127.0.0.1", port):
            raise StackError(f"port {port} is taken by a process this stack did not start")
        p = self.profile
        argv = demo_page.command(
            port=port,
            intake=f"http://127.0.0.1:{p.intake_port}",
            tally=f"http://127.0.0.1:{p.tally_port}",
            widget_key=DEMO_WIDGET_KEY,
            cases_file=p.demo_cases,
        )
        start_listening("the demo page", self.demopage, argv, port)

    def up(self, *, with_prometheus: bool = True) -> None:
        started = time.monotonic()
        self.start_infrastructure()
        self.start_mailsink()
        if with_prometheus:
            self.start_prometheus()
        self.start_services()
        self.start_demo_page()
        print(f"\nClameur is up ({time.monotonic() - started:.1f} s).")
        self.print_where()

    def down(self) -> None:
        for name in reversed(SERVICES):
            if self.service(name).stop(timeout=40):
                print(f"{name}: stopped")
        for managed in (self.demopage, self.prometheus, self.mailsink):
            if managed.stop():
                print(f"{managed.name}: stopped")
        if self.kafka.stop():
            print("kafka: stopped")
        if self.postgres.stop():
            print("postgres: stopped")

    def reset(self) -> None:
        self.down()
        for path in (self.profile.home,):
            if path.exists():
                shutil.rmtree(path)
                print(f"deleted {path}")

    def print_where(self) -> None:
        p = self.profile
        rows = [
            ("intake", f"http://127.0.0.1:{p.intake_port}  (docs: /docs)"),
            ("tally", f"http://127.0.0.1:{p.tally_port}  (cases: /v1/cases)"),
            ("notify", f"http://127.0.0.1:{p.notify_port}"),
            (
                "demo page",
                f"http://127.0.0.1:{p.demo_page_port}  (the widget of each case `make demo` creates)",
            ),
            ("kafka", self.kafka_bootstrap),
            ("postgres", self.database_url),
            (
                "mail",
                f"smtp://127.0.0.1:{p.smtp_port}, saved in {p.mail_dir} (make mail)"
                if not self.external_smtp
                else self.environ["CLAMEUR_SMTP_URL"],
            ),
            ("prometheus", f"http://127.0.0.1:{p.prometheus_port}"),
            ("logs", str(p.log_dir)),
        ]
        for name, where in rows:
            print(f"  {name:<11}{where}")

    def status(self) -> None:
        p = self.profile
        checks: list[tuple[str, bool]] = [
            ("kafka", port_open("127.0.0.1", p.kafka_port) if not self.external_kafka else True),
            ("postgres", self.postgres.running() if not self.external_database else True),
            ("mailsink", self.mailsink.running()),
            ("prometheus", self.prometheus.running()),
            ("demo page", self.demopage.running()),
        ]
        for name in SERVICES:
            checks.append((name, http_ok(f"http://127.0.0.1:{self.service_port(name)}/readyz")))
        for name, ok in checks:
            print(f"  {name:<11}{'up' if ok else 'down'}")


def kafka_login_env(access: Kafka) -> dict[str, str]:
    """The CLAMEUR_KAFKA_* variables a service logs in to Kafka with (none on a plaintext broker)."""
    if isinstance(access, str) or access.username is None or access.password is None:
        return {}
    return {
        "CLAMEUR_KAFKA_SECURITY_PROTOCOL": access.security_protocol,
        "CLAMEUR_KAFKA_SASL_MECHANISM": access.sasl_mechanism,
        "CLAMEUR_KAFKA_USERNAME": access.username,
        "CLAMEUR_KAFKA_PASSWORD": access.password.get_secret_value(),
        **({"CLAMEUR_KAFKA_CA_FILE": str(access.ca_file)} if access.ca_file else {}),
    }


def start_listening(
    what: str, process: Managed, argv: list[str], port: int, *, cwd: Path = ROOT, timeout: float = 20
) -> None:
    """Start ``process`` as ``argv`` and return once it listens on ``port`` (a :class:`StackError`
    naming ``what`` and its log if it does not within ``timeout`` seconds)."""
    process.start(argv, cwd=cwd)
    wait_for(
        f"{what} on 127.0.0.1:{port}", lambda: port_open("127.0.0.1", port), timeout=timeout, log=process.log
    )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def mail_listing(folder: Path, count: int) -> None:
    from devstack.mailsink import latest

    rows = latest(folder, count)
    if not rows:
        print(f"no mail yet in {folder}")
        return
    for path, date, recipient, subject in rows:
        print(f"{date:<32} {recipient:<36} {subject}\n    {path}")
