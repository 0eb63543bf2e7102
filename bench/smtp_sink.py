"""An SMTP sink that only counts: how many messages, to whom, how large, when.

    python -m bench.smtp_sink --port 2525 --stats /tmp/sink.json

aiosmtpd on asyncio in its own process (so it does not share a core's event loop with
what it measures).  It stores nothing but counters: messages accepted, recipients,
distinct recipients, distinct ``Message-ID`` values (a message sent twice shows up as a
duplicate), and the times of the first and last message.  Every ``--every`` seconds and
on exit it writes them as JSON to ``--stats`` (atomically: written then renamed).  With
``--sample PATH`` it also keeps the first message it receives, as received, in PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiosmtpd.smtp import SMTP, Envelope, Session

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass
class Counts:
    messages: int = 0
    recipients: int = 0
    total_bytes: int = 0
    first_at: float | None = None
    last_at: float | None = None
    distinct_recipients: set[str] = field(default_factory=set)
    message_ids: set[bytes] = field(default_factory=set)
    without_message_id: int = 0

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "messages": self.messages,
                "recipients": self.recipients,
                "bytes": self.total_bytes,
                "distinct_recipients": len(self.distinct_recipients),
                "distinct_message_ids": len(self.message_ids),
                "without_message_id": self.without_message_id,
                "first_at": self.first_at,
                "last_at": self.last_at,
                "written_at": time.time(),
            }
        )


class CountingHandler:
    """aiosmtpd handler: accept every message, count it, keep nothing else (but the sample)."""

    def __init__(self, counts: Counts, sample: Path | None = None) -> None:
        self.counts = counts
        self.sample = sample

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        counts = self.counts
        now = time.time()
        if counts.first_at is None:
            counts.first_at = now
        counts.last_at = now
        counts.messages += 1
        counts.recipients += len(envelope.rcpt_tos)
        counts.distinct_recipients.update(address.lower() for address in envelope.rcpt_tos)
        content = envelope.original_content or b""
        if isinstance(content, str):
            content = content.encode()
        counts.total_bytes += len(content)
        if self.sample is not None and counts.messages == 1:
            self.sample.write_bytes(content)
        # Headers end at the first blank line; the Message-ID is among them.
        found = _MESSAGE_ID.search(content, 0, max(content.find(b"\r\n\r\n"), 0) or len(content))
        if found:
            counts.message_ids.add(found.group(1))
        else:
            counts.without_message_id += 1
        return "250 OK"


def write_stats(path: Path, counts: Counts) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(counts.as_json())
    os.replace(partial, path)


async def serve(host: str, port: int, stats: Path, every_s: float, sample: Path | None = None) -> None:
    counts = Counts()
    handler = CountingHandler(counts, sample)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, data_size_limit=10 * 1024 * 1024, hostname="sink"),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_stats(stats, counts)
    print(f"counting SMTP sink on {host}:{port}, stats in {stats}", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            write_stats(stats, counts)
    finally:
        server.close()
        await server.wait_closed()
        write_stats(stats, counts)


def read_stats(path: Path) -> dict[str, float | int | None]:
    """The sink's last written counters (empty before its first write)."""
    try:
        loaded: dict[str, float | int | None] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between stats writes")
    parser.add_argument("--sample", type=Path, help="keep the first message received here")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.stats, args.every, args.sample))


if __name__ == "__main__":
    main()
