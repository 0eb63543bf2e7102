"""``python -m tally``: count signatures, publish case changes, serve the public counts."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from clameur.logs import configure_logging
from tally.app import create_app
from tally.settings import TallySettings


def main() -> int:
    try:
        settings = TallySettings()
    except ValidationError as error:
        print("tally: invalid settings (CLAMEUR_* environment variables):", file=sys.stderr)
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "settings"
            print(f"  {where}: {problem['msg']}", file=sys.stderr)
        return 2
    configure_logging("tally", level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.tally_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
