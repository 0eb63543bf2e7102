"""``python -m tally``: count signatures, publish case changes, serve the public counts."""

from __future__ import annotations

import sys

from clameur.logs import configure_logging
from clameur.serving import load_settings, serve
from tally.app import create_app
from tally.settings import TallySettings


def main() -> int:
    settings = load_settings(TallySettings, "tally")
    if settings is None:
        return 2
    configure_logging("tally", level=settings.log_level, json=settings.log_json)
    serve(create_app(settings), host=settings.host, port=settings.tally_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
