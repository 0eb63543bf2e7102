"""``python -m intake``: read settings, configure logs, serve until SIGTERM.

SIGTERM (or Ctrl-C): uvicorn stops accepting, lets requests in flight finish (up to
30 s), then the app's lifespan flushes the producer; the process exits 0.
Exits 2 with a readable message when the settings are invalid.
"""

from __future__ import annotations

import sys

from clameur.serving import run_service
from intake.app import create_app
from intake.settings import IntakeSettings


def main() -> int:
    return run_service(
        "intake",
        IntakeSettings,
        create_app,
        port=lambda settings: settings.intake_port,
        # Each worker process builds its own app (and producer) from the environment.
        workers=lambda settings: settings.intake_workers,
        factory="intake.app:app_from_environment",
    )


if __name__ == "__main__":
    sys.exit(main())
