"""``python -m intake``: read settings, configure logs, serve until SIGTERM.

SIGTERM (or Ctrl-C): uvicorn stops accepting, lets requests in flight finish (up to
30 s), then the app's lifespan flushes the producer; the process exits 0.
Exits 2 with a readable message when the settings are invalid.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator
from typing import Any

import uvicorn
from pydantic import ValidationError

from clameur.logs import configure_logging
from intake.app import create_app, tune_garbage_collection
from intake.settings import IntakeSettings


def main() -> int:
    try:
        settings = IntakeSettings()
    except ValidationError as exc:
        print(f"intake: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging("intake", level=settings.log_level, json=settings.log_json)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.intake_port,
        "timeout_graceful_shutdown": 30,
        "access_log": False,
        "log_config": None,
        "server_header": False,
        # The client IP is intake's to decide (CLAMEUR_TRUSTED_PROXIES), not uvicorn's.
        "proxy_headers": False,
    }
    if settings.intake_workers > 1:
        # Each worker process builds its own app (and producer) from the environment.
        uvicorn.run(
            "intake.app:app_from_environment", factory=True, workers=settings.intake_workers, **common
        )
        return 0
    tune_garbage_collection()
    _DrainingServer(uvicorn.Config(create_app(settings), **common)).run()
    return 0


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, exiting 0 after a graceful drain.

    uvicorn raises the caught SIGTERM again once it has shut down, so the process dies
    "killed by SIGTERM" (-15) even though it drained and flushed; an orchestrator reading
    the exit status should see a clean stop instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


if __name__ == "__main__":
    sys.exit(main())
