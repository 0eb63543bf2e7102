"""``python -m notify``: read settings, configure logs, serve on settings.host:notify_port."""

from __future__ import annotations

import sys

from clameur.logs import configure_logging
from clameur.serving import load_settings, serve
from notify.app import create_app
from notify.settings import NotifySettings


def main() -> int:
    settings = load_settings(NotifySettings, "notify")
    if settings is None:
        return 2
    configure_logging("notify", level=settings.log_level, json=settings.log_json)
    serve(create_app(settings), host=settings.host, port=settings.notify_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
