"""clameur.serving.run_service: what every ``python -m <service>`` does before and while serving."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn

from clameur import serving
from clameur.settings import ClameurSettings


class _Settings(ClameurSettings):
    port: int = 8123
    workers: int = 1


def _run(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> tuple[int, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        serving, "configure_logging", lambda service, **options: calls.append(("logs", service))
    )
    monkeypatch.setattr(
        serving, "serve", lambda app, *, host, port: calls.append(("serve", (app, host, port)))
    )
    monkeypatch.setattr(
        uvicorn, "run", lambda target, **options: calls.append(("uvicorn", (target, options)))
    )
    status = serving.run_service(
        "tally",
        lambda: _Settings(**fields),
        lambda settings: f"app on {settings.port}",
        port=lambda settings: settings.port,
        workers=lambda settings: settings.workers,
        factory="tally.app:app_from_environment",
    )
    return status, calls


def test_one_process_serves_the_app_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    status, calls = _run(monkeypatch)
    assert status == 0
    assert calls == [("logs", "tally"), ("serve", ("app on 8123", "127.0.0.1", 8123))]


def test_several_workers_build_their_app_through_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    status, calls = _run(monkeypatch, workers=3)
    assert status == 0
    target, options = calls[1][1]
    assert (target, options["factory"], options["workers"], options["port"]) == (
        "tally.app:app_from_environment",
        True,
        3,
        8123,
    )


def test_invalid_settings_exit_2_and_say_what_without_the_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, calls = _run(monkeypatch, env="production", secret="short-secret-value")
    assert (status, calls) == (2, [])
    printed = capsys.readouterr().err
    assert "tally: invalid settings" in printed and "CLAMEUR_SECRET is too short" in printed
    assert "short-secret-value" not in printed
