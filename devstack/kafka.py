"""Apache Kafka from Maven Central, one KRaft broker+controller on loopback.

The jars come from ``deploy/kafka/pom.xml`` through Maven (``mvn dependency:copy-
dependencies``) into the git-ignored cache; the log directory is formatted once with
``kafka.tools.StorageTool`` and kept between runs.
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from devstack.kafka_security import BrokerSecurity
from devstack.layout import CACHE, KAFKA_LIBS, ROOT
from devstack.processes import Managed, StackError, port_open, refuse_taken_port, run, wait_for

POM = ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J = ROOT / "deploy" / "kafka" / "log4j2.properties"


def ensure_jars() -> Path:
    """Fetch the broker's jars once; a marker records which pom they came from."""
    marker = KAFKA_LIBS / ".pom"
    pom = POM.read_text()
    if marker.exists() and marker.read_text() == pom:
        return KAFKA_LIBS
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise StackError("Kafka needs Java 17+ and Maven: apt-get install openjdk-17-jre-headless maven")
    print("kafka: fetching the broker's jars from Maven Central (once)...", flush=True)
    if KAFKA_LIBS.exists():
        shutil.rmtree(KAFKA_LIBS)
    KAFKA_LIBS.mkdir(parents=True)
    run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            f"-Dmaven.repo.local={CACHE / 'm2'}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={KAFKA_LIBS}",
            "-DincludeScope=runtime",
        ],
        what="fetching Kafka from Maven Central",
    )
    marker.write_text(pom)
    return KAFKA_LIBS


@dataclass(frozen=True)
class LocalKafka:
    """One broker+controller with its own ports and log directory."""

    name: str
    port: int
    controller_port: int
    data_dir: Path
    run_dir: Path
    log_dir: Path
    heap: str = "768m"
    cleaner_backoff_ms: int | None = None
    """How long the log cleaner sleeps when it finds nothing to clean (``log.cleaner.backoff.ms``).

    None keeps Kafka's default (15 s), as in production; the test profile sets 1 s, so a
    tombstone on contacts.v1 is compacted within seconds of its segment rolling and the
    erasure tests can hold a bound of a few seconds (docs/privacy.md)."""
    retention_check_interval_ms: int | None = None
    """How often the broker deletes segments past their retention (``log.retention.check.interval.ms``).

    None keeps Kafka's default (5 min: a DLQ record outlives the erasure bound by at most
    that); the test profile sets 1 s, so a DLQ is empty on disk within seconds of its bound."""
    security: BrokerSecurity | None = None
    """None: one PLAINTEXT listener for clients.  Else SASL_SSL only, SCRAM users and ACLs
    (the ``secure`` profile, devstack.kafka_security)."""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> Managed:
        return Managed(self.name, self.run_dir, self.log_dir)

    @property
    def properties(self) -> Path:
        return self.data_dir.parent / f"{self.name}.properties"

    def _write_properties(self) -> None:
        logs = self.data_dir / "logs"
        self.properties.parent.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    "controller.listener.names=CONTROLLER",
                    *self._listeners(),
                    f"log.dirs={logs}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    *(
                        [f"log.cleaner.backoff.ms={self.cleaner_backoff_ms}"]
                        if self.cleaner_backoff_ms is not None
                        else []
                    ),
                    *(
                        [f"log.retention.check.interval.ms={self.retention_check_interval_ms}"]
                        if self.retention_check_interval_ms is not None
                        else []
                    ),
                    "",
                ]
            )
        )

    def _listeners(self) -> list[str]:
        if self.security is not None:
            return self.security.properties(self.port, self.controller_port)
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
        ]

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            f"{ensure_jars()}/*",
            main,
            *args,
        ]

    def formatted(self) -> bool:
        return (self.data_dir / "logs" / "meta.properties").exists()

    def format(self) -> None:
        if self.security is not None:
            self.security.ensure()
        self._write_properties()
        cluster_id = run(self._java("kafka.tools.StorageTool", "random-uuid"), what="kafka random-uuid")
        run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id.strip().splitlines()[-1],
                "-c",
                str(self.properties),
                "--standalone",
                *(self.security.scram_arguments() if self.security is not None else []),
            ),
            what="formatting Kafka's log directory",
        )

    def running(self) -> bool:
        return self.process.running()

    def start(self, *, timeout: float = 90.0) -> None:
        """Start the broker (formatting its log dir the first time) and wait for its port."""
        if self.running():
            return
        refuse_taken_port(self.port, instead="point CLAMEUR_KAFKA at it")
        if self.security is not None and self.formatted() and not self.security.passwords_file.exists():
            raise StackError(
                f"{self.security.passwords_file} is gone but the broker's users were made with it: "
                "run `python -m devstack reset --profile secure`"
            )
        if not self.formatted():
            self.format()
        self._write_properties()
        self.process.start(self._java("kafka.Kafka", str(self.properties)))
        wait_for(
            f"Kafka on {self.bootstrap}",
            lambda: port_open("127.0.0.1", self.port) and port_open("127.0.0.1", self.controller_port),
            timeout=timeout,
            log=self.process.log,
        )

    def stop(self) -> bool:
        return self.process.stop(timeout=30)

    def kill(self) -> bool:
        return self.process.stop(timeout=5, sig=signal.SIGKILL)
