"""``python -m notify``: read settings, configure logs, serve on settings.host:notify_port."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from clameur.logs import configure_logging
from notify.app import create_app
from notify.settings import NotifySettings


def main() -> int:
    try:
        settings = NotifySettings()
    except ValidationError as error:
        # Messages only: the inputs may hold secrets (CLAMEUR_SMTP_URL carries a password).
        print("notify: invalid settings:", file=sys.stderr)
        for problem in error.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in problem["loc"]) or "settings"
            print(f"  - {field}: {problem['msg']}", file=sys.stderr)
        return 2
    configure_logging("notify", level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.notify_port,
        log_config=None,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
