"""A local SMTP sink: every message it receives is saved as an ``.eml`` file a person can read.

    python -m devstack.mailsink --port 1025 --dir .cache/dev/mail

Used by ``make up`` (port 1025) and ``make mail`` (which lists the latest messages).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import signal
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class SaveToFolder:
    """aiosmtpd handler: write each message to ``<dir>/<time>-<id>.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        (self.folder / name).write_bytes(content)
        return "250 Message accepted for delivery"


def latest(folder: Path, count: int = 10) -> list[tuple[Path, str, str, str]]:
    """The newest messages: (file, date, recipient, subject)."""
    files = sorted(folder.glob("*.eml"))[-count:] if folder.exists() else []
    rows = []
    for path in reversed(files):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        rows.append(
            (path, str(message.get("Date", "")), str(message.get("To", "")), str(message.get("Subject", "")))
        )
    return rows


async def serve(host: str, port: int, folder: Path) -> None:
    controller = Controller(SaveToFolder(folder), hostname=host, port=port, data_size_limit=10 * 1024 * 1024)
    controller.start()
    print(f"mail sink on {host}:{port}, saving to {folder}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.dir))


if __name__ == "__main__":
    main()
