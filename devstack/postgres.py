"""PostgreSQL 15 from Debian's packages, a private cluster on loopback.

The cluster lives in the cache folder, listens on 127.0.0.1 only (no Unix socket) and
trusts local connections: it is a developer's and a test run's database, never a
production one.  As root, the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import StackError, refuse_taken_port, run

BIN = Path("/usr/lib/postgresql/15/bin")


def ensure_installed() -> None:
    """Install Debian's postgresql-15 when its server binary is missing (as root)."""
    if (BIN / "postgres").exists():
        return
    if os.geteuid() != 0:
        raise StackError("PostgreSQL 15 is missing: sudo apt-get install -y postgresql-15")
    print("postgres: installing Debian's postgresql-15 (once)...", flush=True)
    apt_install("postgresql-15")


def apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        run(["apt-get", "update", "-q"], what="apt-get update", env=env)
        run(install, what=f"apt-get install {' '.join(packages)}", env=env)


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _let_postgres_reach(path: Path) -> None:
    """As root, the postgres user must be able to traverse every parent folder."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@dataclass(frozen=True)
class LocalPostgres:
    """One cluster: its data directory, its port, and its server settings."""

    data_dir: Path
    port: int
    log_file: Path
    durable: bool = True
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return f"postgresql://clameur@127.0.0.1:{self.port}/clameur"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://clameur@127.0.0.1:{self.port}/{database}"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        ensure_installed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        _let_postgres_reach(self.data_dir)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            self.log_file.touch()
            shutil.chown(self.log_file, "postgres", "postgres")
        self.data_dir.chmod(0o700)
        run(
            _as_postgres(
                [
                    str(BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "clameur",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-instructions",
                ]
            ),
            what="initdb",
        )

    def _options(self) -> str:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "''",
            "max_connections": "200",
            "shared_buffers": "256MB",
            **(
                {}
                if self.durable
                else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
            ),
            **self.settings,
        }
        return " ".join(f"-c {key}={value}" for key, value in options.items())

    def running(self) -> bool:
        if not self.initialised():
            return False
        result = subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "status", "-D", str(self.data_dir)]),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def start(self) -> None:
        """Start the cluster (creating it the first time) and its ``clameur`` database."""
        if not self.initialised():
            self.init()
        if self.running():
            return
        refuse_taken_port(self.port, instead="point CLAMEUR_DATABASE_URL at it")
        _let_postgres_reach(self.log_file.parent)
        if os.geteuid() == 0 and not self.log_file.exists():
            self.log_file.touch()
            shutil.chown(self.log_file, "postgres", "postgres")
        run(
            _as_postgres(
                [
                    str(BIN / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    self._options(),
                ]
            ),
            what=f"starting PostgreSQL on 127.0.0.1:{self.port} (log: {self.log_file})",
        )
        self.create_database("clameur")

    def create_database(self, name: str) -> None:
        # Names come from this module and the tests, never from a request.
        exists = self.psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
        if exists.strip() != "1":
            self.psql("postgres", f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, database: str, sql: str) -> str:
        return run(
            [
                "psql",
                "-X",
                "-q",
                "-t",
                "-A",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "clameur",
                "-d",
                database,
                "-c",
                sql,
            ],
            what=f"psql {sql[:40]!r}",
        )

    def stop(self, *, mode: str = "fast") -> bool:
        """Stop the cluster; ``mode="immediate"`` is a crash (recovery on next start)."""
        if not self.running():
            return False
        run(
            _as_postgres([str(BIN / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data_dir)]),
            what="stopping PostgreSQL",
        )
        return True

    def kill(self) -> bool:
        return self.stop(mode="immediate")
