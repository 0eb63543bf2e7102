"""The one SMTP sink of the project: for people (``make up``), the tests and the benches.

    python -m devstack.mailsink --port 1025 --dir .cache/dev/mail
    python -m devstack.mailsink --port 2525 --stats /tmp/sink.json [--sample first.eml]

It accepts every message (aiosmtpd on asyncio) and does with each what it was asked to:

- ``--dir``: save it as ``<dir>/<time>-<id>.eml``, a file a person can read (``make up``
  runs the sink so on port 1025; ``make mail`` lists the latest with :func:`latest`);
- ``--stats``: count it, and keep nothing else (the benches: the sink has its own
  process so that it does not share a core's event loop with what is measured).  The
  counts are messages, recipients, distinct recipients, distinct ``Message-ID`` values
  (a message sent twice shows up as a duplicate), bytes, and the times of the first and
  last message; written as JSON every ``--every`` seconds and on exit, atomically
  (written then renamed), read back with :func:`read_stats`.  ``--sample PATH`` keeps
  the first message, as received, in PATH; ``--links PATH`` appends one JSON line per
  confirmation email (``at``: arrival time, ``to``: recipient, ``link``: its
  ``/v1/confirm/`` link), flushed with the counts (the confirmation bench plays
  supporters who open them);
- in a test's own process, :func:`on_loopback` runs a :class:`SmtpSink` that keeps every
  message in memory, and can refuse a recipient with a chosen code (to test retries
  and permanent failures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import IO

import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from devstack.processes import free_port

DATA_SIZE_LIMIT = 10 * 1024 * 1024
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)
_CONFIRM_LINK = re.compile(rb"https?://[^\s\"'<>=]+/v1/confirm/[A-Za-z0-9_.~-]+")


@dataclass(frozen=True)
class Received:
    """One message as the sink accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Refusal:
    code: int
    times: int | None
    """How many times to refuse; ``None`` for always."""


@dataclass
class Counts:
    """What a counting sink knows of the messages it accepted."""

    messages: int = 0
    recipients: int = 0
    total_bytes: int = 0
    first_at: float | None = None
    last_at: float | None = None
    distinct_recipients: set[str] = field(default_factory=set)
    message_ids: set[bytes] = field(default_factory=set)
    without_message_id: int = 0
    links: IO[bytes] | None = None
    """Where each confirmation email's arrival, recipient and confirm link go (JSON lines)."""

    def add(self, recipients: list[str], content: bytes) -> None:
        now = time.time()
        if self.links is not None and b"/v1/confirm/" in content.replace(b"=\r\n", b""):
            self.add_link(now, recipients, content)
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.messages += 1
        self.recipients += len(recipients)
        self.distinct_recipients.update(address.lower() for address in recipients)
        self.total_bytes += len(content)
        # Headers end at the first blank line; the Message-ID is among them.
        found = _MESSAGE_ID.search(content, 0, max(content.find(b"\r\n\r\n"), 0) or len(content))
        if found:
            self.message_ids.add(found.group(1))
        else:
            self.without_message_id += 1

    def add_link(self, now: float, recipients: list[str], content: bytes) -> None:
        # Quoted-printable: soft line breaks removed; the token's alphabet needs no escapes.
        found = _CONFIRM_LINK.search(content.replace(b"=\r\n", b""))
        if found is not None and self.links is not None:
            link = found.group(0).decode()
            for recipient in recipients:
                self.links.write(orjson.dumps({"at": now, "to": recipient, "link": link}) + b"\n")

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


@dataclass
class SmtpSink:
    """aiosmtpd handler: accept every message and keep, save or count it.

    ``keep``: every message in memory (:attr:`received`, :meth:`to`, :meth:`count`);
    ``folder``: one ``.eml`` file each; ``counts``: counters only; ``sample``: the first
    message, as received, in that file.  ``refuse(address, 451, times=2)`` makes it
    answer RCPT for that address with the code, ``times`` times (always when ``None``),
    then accept.  Safe to read from another thread than the sink's.
    """

    keep: bool = True
    port: int = 0
    """Where it listens, once served on loopback by :func:`on_loopback`."""
    folder: Path | None = None
    counts: Counts | None = None
    sample: Path | None = None
    received: list[Received] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    _rules: dict[str, Refusal] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def refuse(self, address: str, code: int, times: int | None = None) -> None:
        with self._lock:
            self._rules[address] = Refusal(code, times)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self._rules:
            with self._lock:
                rule = self._rules.get(address)
                if rule is not None and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    self.refusals[address] = self.refusals.get(address, 0) + 1
                    kind = "try again later" if rule.code < 500 else "no such mailbox"
                    return f"{rule.code} {kind}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode()
        if self.keep:
            with self._lock:
                self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content))
        if self.folder is not None:
            (self.folder / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml").write_bytes(content)
        if self.counts is not None:
            self.counts.add(envelope.rcpt_tos, content)
            if self.sample is not None and self.counts.messages == 1:
                self.sample.write_bytes(content)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        """The messages kept for ``address`` (an envelope recipient)."""
        with self._lock:
            return [mail for mail in self.received if address in mail.rcpt_tos]

    def count(self) -> int:
        with self._lock:
            return len(self.received)


@contextlib.contextmanager
def on_loopback(sink: SmtpSink | None = None) -> Iterator[SmtpSink]:
    """``sink`` (one that keeps every message, by default) served on a free port of
    127.0.0.1, in a thread of its own; stopped on exit."""
    handler = sink if sink is not None else SmtpSink()
    handler.port = handler.port or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port, data_size_limit=DATA_SIZE_LIMIT)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def latest(folder: Path, count: int = 10) -> list[tuple[Path, str, str, str]]:
    """The newest messages saved in ``folder``: (file, date, recipient, subject)."""
    files = sorted(folder.glob("*.eml"))[-count:] if folder.exists() else []
    rows = []
    for path in reversed(files):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        rows.append(
            (path, str(message.get("Date", "")), str(message.get("To", "")), str(message.get("Subject", "")))
        )
    return rows


def write_stats(path: Path, counts: Counts) -> None:
    if counts.links is not None:
        counts.links.flush()
    partial = path.with_suffix(".tmp")
    partial.write_bytes(counts.as_json())
    os.replace(partial, path)


def read_stats(path: Path) -> dict[str, float | int | None]:
    """A counting sink's last written counters (empty before its first write)."""
    try:
        loaded: dict[str, float | int | None] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return loaded


async def serve(
    host: str, port: int, sink: SmtpSink, stats: Path | None = None, every_s: float = 0.25
) -> None:
    """Serve ``sink`` on ``host:port`` until SIGTERM or Ctrl-C; write its counts to ``stats``."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, enable_SMTPUTF8=True, data_size_limit=DATA_SIZE_LIMIT, hostname="sink"),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def checkpoint() -> None:
        if stats is not None and sink.counts is not None:
            write_stats(stats, sink.counts)

    checkpoint()
    kept = f", saving to {sink.folder}" if sink.folder else ""
    counted = f", stats in {stats}" if stats else ""
    print(f"SMTP sink on {host}:{port}{kept}{counted}", flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            checkpoint()
    finally:
        server.close()
        await server.wait_closed()
        checkpoint()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, help="save each message here as an .eml file")
    parser.add_argument("--stats", type=Path, help="count the messages, keep nothing, write the counts here")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between stats writes")
    parser.add_argument("--sample", type=Path, help="with --stats: keep the first message received here")
    parser.add_argument(
        "--links", type=Path, help="with --stats: append each confirmation email's time, recipient, link here"
    )
    args = parser.parse_args()
    if args.dir is None and args.stats is None:
        parser.error("say what to do with the messages: --dir, --stats, or both")
    with contextlib.ExitStack() as files:
        counts = Counts() if args.stats else None
        if counts is not None and args.links is not None:
            counts.links = files.enter_context(args.links.open("ab"))
        sink = SmtpSink(keep=False, folder=args.dir, counts=counts, sample=args.sample)
        asyncio.run(serve(args.host, args.port, sink, args.stats, args.every))


if __name__ == "__main__":
    main()
