"""Supporters, played by a process of their own: they sign at a fixed rate and open their emails.

    python -m bench.supporters --intake URL --case ID --run RUN --links SINK.jsonl --out OUT.json
        [--rate 1000] [--duration 300] [--connections 256] [--click-share 0.7] [--mail-wait 60]

- Signing: open-loop, one unique supporter every ``1/rate`` seconds (their address
  ``c<run>x<n>@<provider>``, no dot or plus, so it is its own canonical form), sent on
  the first free of ``--connections`` kept-alive HTTP/1.1 connections (a request waits
  for one when all are busy: that lateness is recorded, not hidden).  Each 202's arrival
  time is kept per address.
- Reading mail: the SMTP sink's ``--links`` file (one JSON line per confirmation email:
  arrival, recipient, link) is followed as it grows.  For each of this run's supporters,
  70% of them (``--click-share``, chosen by a hash of the address) open the link at once
  (GET on their own connections); the time the request left is kept.
- After ``--duration``: waits up to ``--mail-wait`` s for the emails of every accepted
  signature and for the clicks, then writes everything to ``--out`` (JSON) and exits.

A small asyncio HTTP client writes requests and reads ``Content-Length`` answers itself:
at 1,000 signatures/s plus clicks, httpx's per-request cost would take a core of the two
the whole bench shares.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.synthetic import COUNTRIES, FIRST_NAMES, LAST_NAMES

PROVIDERS = ("gmail.com", "outlook.com", "orange.fr", "free.fr", "gmx.de", "proton.me")
"""Large mailbox providers: intake exempts them from its per-domain limit."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.supporters", description=__doc__.split("\n")[0])
    parser.add_argument("--intake", required=True, help="intake's base URL")
    parser.add_argument("--case", required=True)
    parser.add_argument("--run", required=True, help="part of every address (unique across runs)")
    parser.add_argument("--links", type=Path, required=True, help="the sink's --links file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="signatures/s")
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--click-connections", type=int, default=32)
    parser.add_argument("--click-share", type=float, default=0.7)
    parser.add_argument("--mail-wait", type=float, default=60.0)
    return parser.parse_args(argv)


def clicks(address: str, share: float) -> bool:
    """Whether this supporter opens their link: a stable hash of the address, ``share`` of them."""
    return zlib.crc32(address.encode()) % 10_000 < share * 10_000


# -- a small HTTP/1.1 client -------------------------------------------------------------------------


class Pool:
    """``size`` kept-alive connections to one host; a request takes the first free one."""

    def __init__(self, base: str, size: int) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.size = size
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(size):
            self.free.put_nowait(None)  # opened on first use

    async def request(self, raw: bytes, on_sent: list[float] | None = None) -> tuple[int, float]:
        """Send ``raw`` (a whole request); returns (status, time the answer was read)."""
        connection = await self.free.get()
        try:
            if connection is None:
                connection = await asyncio.open_connection(self.host, self.port)
            reader, writer = connection
            if on_sent is not None:
                on_sent.append(time.time())
            writer.write(raw)
            status = await _read_response(reader)
            answered = time.time()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            if connection is not None:
                connection[1].close()
            self.free.put_nowait(None)
            return 0, time.time()
        self.free.put_nowait(connection)
        return status, answered


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked answers are not read by this client")
    if length:
        await reader.readexactly(length)
    return status


def signature_request(host: str, case_id: str, address: str, rng: random.Random) -> bytes:
    body = orjson.dumps(
        {
            "first_name": rng.choice(FIRST_NAMES),
            "last_name": rng.choice(LAST_NAMES),
            "email": address,
            "country": rng.choice(COUNTRIES),
            "locale": rng.choice(("fr", "en")),
            "consent": {"updates": rng.random() < 0.25},
            "source": {"widget": "bench"},
        }
    )
    # A random client address: intake trusts X-Forwarded-For from loopback in the bench.
    client = f"{rng.randint(11, 126)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}"
    head = (
        f"POST /v1/cases/{case_id}/signatures HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nX-Forwarded-For: {client}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- the supporters ---------------------------------------------------------------------------------


@dataclass
class Played:
    """What the supporters did and saw."""

    accepted: dict[str, float] = field(default_factory=dict)
    """address -> when its 202 was read."""
    statuses: dict[int, int] = field(default_factory=dict)
    late: list[float] = field(default_factory=list)
    """Per signature: seconds between when it was due and when it left."""
    clicked: dict[str, tuple[float, int, float]] = field(default_factory=dict)
    """address -> (when the GET left, its status, when its answer was read)."""
    links_read: int = 0
    sent: int = 0


async def sign(args: argparse.Namespace, played: Played) -> None:
    pool = Pool(args.intake, args.connections)
    rng = random.Random(args.run)
    tasks: set[asyncio.Task[None]] = set()
    host = f"{pool.host}:{pool.port}"

    async def one(n: int, due: float) -> None:
        address = f"c{args.run}x{n}@{PROVIDERS[n % len(PROVIDERS)]}"
        sent_at: list[float] = []
        status, answered = await pool.request(signature_request(host, args.case, address, rng), sent_at)
        played.late.append((sent_at[0] if sent_at else answered) - due)
        played.statuses[status] = played.statuses.get(status, 0) + 1
        if status == 202:
            played.accepted[address] = answered

    started = time.time()
    n = 0
    while (due := started + n / args.rate) < started + args.duration:
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    played.sent = n
    if tasks:
        await asyncio.gather(*tasks)


async def read_mail(args: argparse.Namespace, played: Played, signing: asyncio.Task[None]) -> None:
    """Follow the sink's links file; open ``--click-share`` of this run's links at once."""
    pool: Pool | None = None
    tasks: set[asyncio.Task[None]] = set()
    mine = f"c{args.run}x"
    offset = 0
    waited_since: float | None = None
    seen: set[str] = set()

    async def open_link(address: str, link: str) -> None:
        nonlocal pool
        parts = urlsplit(link)
        if pool is None:
            pool = Pool(f"{parts.scheme}://{parts.netloc}", args.click_connections)
        sent_at: list[float] = []
        raw = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        status, answered = await pool.request(raw, sent_at)
        played.clicked[address] = (sent_at[0] if sent_at else answered, status, answered)

    while True:
        offset = _follow(args.links, offset, mine, seen, played, args.click_share, open_link, tasks)
        if signing.done():
            waited_since = waited_since or time.time()
            complete = all(address in seen for address in played.accepted)
            if complete or time.time() - waited_since > args.mail_wait:
                break
        await asyncio.sleep(0.05)
    if tasks:
        await asyncio.gather(*tasks)


def _follow(
    path: Path,
    offset: int,
    mine: str,
    seen: set[str],
    played: Played,
    share: float,
    open_link: Callable[[str, str], Coroutine[Any, Any, None]],
    tasks: set[asyncio.Task[None]],
) -> int:
    """Read the links file's new complete lines from ``offset``; returns the new offset."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            chunk = file.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        entry = orjson.loads(line)
        address = entry["to"]
        if not address.startswith(mine) or address in seen:
            continue
        seen.add(address)
        played.links_read += 1
        if clicks(address, share):
            task = asyncio.create_task(open_link(address, entry["link"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    return offset + end


async def play(args: argparse.Namespace) -> Played:
    played = Played()
    signing = asyncio.create_task(sign(args, played))
    await read_mail(args, played, signing)
    await signing
    return played


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    played = asyncio.run(play(args))
    args.out.write_bytes(
        orjson.dumps(
            {
                "sent": played.sent,
                "statuses": {str(k): v for k, v in played.statuses.items()},
                "late": sorted(played.late),
                "accepted": played.accepted,
                "clicked": played.clicked,
                "links_read": played.links_read,
            }
        )
    )


if __name__ == "__main__":
    main()
