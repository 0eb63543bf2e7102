"""Background processes with pid files: start once, find again, stop by process id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


class StackError(RuntimeError):
    """Something the local stack needs is missing or failed; the message says what to do."""


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def refuse_taken_port(port: int, *, instead: str = "") -> None:
    """:class:`StackError` when something (not started by this stack) already listens on ``port``.

    ``instead`` says what else a person can do (point a variable at what is there).
    """
    if port_open("127.0.0.1", port):
        hint = f"; stop it, or {instead}" if instead else ""
        raise StackError(f"port {port} is taken by a process this stack did not start{hint}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def poll(ready: Callable[[], bool], *, timeout: float, every: float = 0.2) -> bool:
    """Call ``ready`` every ``every`` s until it is true (``True``) or ``timeout`` s passed (``False``).

    The one polling loop of the stack, the benches and the tests; each says its own error.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(every)
    return False


def wait_for(what: str, ready: Callable[[], bool], *, timeout: float, log: Path | None = None) -> None:
    if poll(ready, timeout=timeout):
        return
    hint = f"; see its log: {log}" if log else ""
    tail = ""
    if log and log.exists():
        tail = "\n--- last lines of the log ---\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-15:]
        )
    raise StackError(f"{what} did not become ready within {timeout:.0f} s{hint}{tail}")


@dataclass(frozen=True)
class Managed:
    """A background process known by its pid file."""

    name: str
    run_dir: Path
    log_dir: Path

    # Handles of the children this process started: kept so they can be reaped (and so
    # Python does not warn that a child outlived its handle).
    _children: ClassVar[dict[int, subprocess.Popen[bytes]]] = {}

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        if _is_zombie(pid):
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start ``argv`` in its own session, output appended to the log; returns the pid."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self._children[process.pid] = process
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def stop(self, *, timeout: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> bool:
        """Signal the process group and wait for it to exit; SIGKILL after ``timeout``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait()
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    # Reap our own children so they do not linger as zombies.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None, quiet: bool = True) -> str:
    """Run a command to completion; raise :class:`StackError` with its output if it fails."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"{what} failed ({' '.join(argv)}):\n{result.stdout}\n{result.stderr}".strip())
    if not quiet:
        print(result.stdout, end="")
    return result.stdout
