"""``python -m intake``: read settings, configure logs, serve until SIGTERM.

SIGTERM (or Ctrl-C): uvicorn stops accepting, lets requests in flight finish (up to
30 s), then the app's lifespan flushes the producer; the process exits 0.
Exits 2 with a readable message when the settings are invalid.
"""

from __future__ import annotations

import sys

import uvicorn

from clameur.logs import configure_logging
from clameur.serving import load_settings, serve, uvicorn_options
from intake.app import create_app
from intake.settings import IntakeSettings


def main() -> int:
    settings = load_settings(IntakeSettings, "intake")
    if settings is None:
        return 2
    configure_logging("intake", level=settings.log_level, json=settings.log_json)
    if settings.intake_workers > 1:
        # Each worker process builds its own app (and producer) from the environment.
        uvicorn.run(
            "intake.app:app_from_environment",
            factory=True,
            workers=settings.intake_workers,
            **uvicorn_options(settings.host, settings.intake_port),
        )
        return 0
    serve(create_app(settings), host=settings.host, port=settings.intake_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
