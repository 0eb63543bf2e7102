"""``python -m tally``: count signatures, publish case changes, serve the public counts."""

from __future__ import annotations

import sys

from clameur.serving import run_service
from tally.app import create_app
from tally.settings import TallySettings


def main() -> int:
    return run_service("tally", TallySettings, create_app, port=lambda settings: settings.tally_port)


if __name__ == "__main__":
    sys.exit(main())
