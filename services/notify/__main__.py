"""``python -m notify``: read settings, configure logs, serve on settings.host:notify_port."""

from __future__ import annotations

import sys

from clameur.serving import run_service
from notify.app import create_app
from notify.settings import NotifySettings


def main() -> int:
    return run_service("notify", NotifySettings, create_app, port=lambda settings: settings.notify_port)


if __name__ == "__main__":
    sys.exit(main())
