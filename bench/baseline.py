"""An older revision of Clameur, checked out beside this one, to measure both in one run.

``python -m bench.intake --baseline-rev 46d361b`` serves that revision's intake under the
same uvicorn setup and the same wrk load as this checkout's: the cost of a change is the
ratio of the two, measured minutes apart on the same machine, not against a number in a
document written on another day.

The revision is checked out with ``git worktree add --detach`` under
``.cache/bench/rev-<commit>`` (reused while it holds that commit) and gets its own locked
virtualenv (``uv sync --frozen`` there), so its process imports its own code and its own
dependencies, never this checkout's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, BenchError, say

CHECKOUTS = ROOT / ".cache" / "bench"


@dataclass(frozen=True)
class Baseline:
    """A revision ready to run: its commit, its checkout and its interpreter."""

    rev: str
    commit: str
    checkout: Path

    @property
    def python(self) -> str:
        return str(self.checkout / ".venv" / "bin" / "python")

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` for a process of the revision: nothing that points at this checkout's code."""
        clean = {name: value for name, value in env.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
        clean["VIRTUAL_ENV"] = str(self.checkout / ".venv")
        return clean

    def topic_names(self, prefix: str) -> list[str]:
        """The names the revision's own ``Topics`` gives under ``prefix`` (its topics may differ)."""
        script = (
            "import json, sys; from clameur.topics import Topics; "
            "print(json.dumps([spec.name for spec in Topics(prefix=sys.argv[1]).specs()]))"
        )
        names: list[str] = json.loads(self._run_python(script, prefix))
        return names

    def create_topics(self, bootstrap: str, prefix: str, *, signature_partitions: int) -> None:
        """The revision's topics under ``prefix``, made by the revision's own ``ensure_topics``."""
        script = (
            "import asyncio, sys; from clameur.topics import Topics, ensure_topics; "
            "asyncio.run(ensure_topics(sys.argv[1], Topics(prefix=sys.argv[2]), "
            "signature_partitions=int(sys.argv[3])))"
        )
        self._run_python(script, bootstrap, prefix, str(signature_partitions))

    def _run_python(self, script: str, *arguments: str) -> str:
        argv = [self.python, "-c", script, *arguments]
        what = f"baseline {self.rev}: {script[:60]}... failed:\n"
        return _run(argv, self.checkout, self.env(dict(os.environ)), 120, what)


def prepare(rev: str) -> Baseline:
    """``rev`` checked out under ``.cache/bench/`` with its locked virtualenv, ready to run."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    checkout = CHECKOUTS / f"rev-{commit[:12]}"
    if checkout.exists() and _git("-C", str(checkout), "rev-parse", "HEAD").strip() != commit:
        raise BenchError(f"{checkout} holds another commit; remove it (git worktree remove {checkout})")
    if not checkout.exists():
        CHECKOUTS.mkdir(parents=True, exist_ok=True)
        say(f"baseline: checking out {rev} ({commit[:12]}) into {checkout}")
        _git("worktree", "add", "--detach", str(checkout), commit)
    say(f"baseline: uv sync --frozen in {checkout}")
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
    _run(
        [_uv(), "sync", "--frozen", "--quiet"],
        checkout,
        env,
        900,
        f"baseline {rev}: uv sync --frozen failed:\n",
    )
    return Baseline(rev=rev, commit=commit, checkout=checkout)


def _uv() -> str:
    pinned = ROOT / ".cache" / "tools" / "bin" / "uv"
    found = str(pinned) if pinned.exists() else shutil.which("uv")
    if found is None:
        raise BenchError("uv is not installed: run `make bootstrap` first")
    return found


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, failed: str) -> str:
    """Run ``argv`` in the baseline's checkout; its output, or :class:`BenchError` saying
    ``failed`` and the end of its stderr."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        raise BenchError(f"{failed}{done.stderr[-2000:]}")
    return done.stdout


def _git(*arguments: str) -> str:
    done = subprocess.run(
        ["git", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(arguments)}: {done.stderr.strip()}")
    return done.stdout
