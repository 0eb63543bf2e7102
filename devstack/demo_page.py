"""A campaign page for the local stack: the widget of each case of the last ``make demo``.

    python -m devstack.demo_page --port 8080 --intake http://127.0.0.1:8001 \\
        --tally http://127.0.0.1:8002 --key pk_dev_demo --cases .cache/dev/demo-cases.json

Served on its own port, hence another origin than intake's, as a real campaign site is,
and under the strict Content-Security-Policy the README recommends (scripts from intake
only, requests to intake and tally only, no inline script or style), so what a person
tries here is what a campaign gets.  The page is written at each request: the cases of
the last demo run (``bench/demo.py`` leaves their ids in ``--cases``), else every case
tally knows.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PAGE_CSS = b"""
body { font-family: Georgia, "Times New Roman", serif; color: #1d1d1d; background: #f4f1ea;
       margin: 0 auto; max-width: 64rem; padding: 1.5rem 1rem 4rem; line-height: 1.5; }
h1 { font-size: 2rem; margin: 0 0 .25rem; }
.lead { margin: 0 0 2rem; max-width: 44rem; }
.cases { display: grid; grid-template-columns: repeat(auto-fill, minmax(20rem, 1fr));
         gap: 1.25rem; align-items: start; }
.note { background: #fff; border-left: 4px solid #8a6500; padding: .75rem 1rem; }
code { font-size: .95em; }
"""


def case_ids(tally: str, cases_file: Path) -> list[str]:
    """The last demo run's case ids, else every case tally lists (newest first)."""
    try:
        ids = json.loads(cases_file.read_text())
        if isinstance(ids, list) and all(isinstance(case_id, str) for case_id in ids):
            return ids
    except (OSError, ValueError):
        pass
    try:
        with urllib.request.urlopen(f"{tally}/v1/cases", timeout=3) as answer:  # noqa: S310 - our tally
            listing: dict[str, Any] = json.load(answer)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    cases = sorted(listing.get("cases", []), key=lambda case: str(case.get("updated_at", "")), reverse=True)
    return [str(case["id"]) for case in cases[:12]]


def render(intake: str, widget_key: str, ids: list[str]) -> bytes:
    esc = html.escape
    if ids:
        widgets = "\n".join(
            f'<div class="clameur-petition" data-case="{esc(case_id)}" data-lang="fr" '
            f'data-key="{esc(widget_key)}"></div>'
            for case_id in ids
        )
        body = f'<section class="cases">{widgets}</section>'
    else:
        body = '<p class="note">No case yet: run <code>make demo</code>, then reload this page.</p>'
    return f"""<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Écrire pour les droits : agissez</title>
<link rel="stylesheet" href="/page.css">
</head>
<body>
<main>
<h1>Écrire pour les droits</h1>
<p class="lead">Une page de campagne de démonstration : chaque formulaire ci-dessous est le widget
Clameur d'un cas créé par <code>make demo</code>. Signez, et regardez le compteur bouger.</p>
{body}
</main>
<script src="{esc(intake)}/v1/widget.js" async></script>
</body>
</html>
""".encode()


def content_security_policy(intake: str, tally: str) -> str:
    return (
        f"default-src 'none'; script-src {intake}; connect-src {intake} {tally}; "
        "style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def serve(host: str, port: int, intake: str, tally: str, widget_key: str, cases_file: Path) -> None:
    csp = content_security_policy(intake, tally)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/":
                self._send(
                    200, "text/html; charset=utf-8", render(intake, widget_key, case_ids(tally, cases_file))
                )
            elif path == "/page.css":
                self._send(200, "text/css; charset=utf-8", PAGE_CSS)
            elif path == "/favicon.ico":
                self._send(204, "image/x-icon", b"")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found")

        def _send(self, status: int, media_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", csp)
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"demo page: {format % args}\n")

    server = ThreadingHTTPServer((host, port), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"demo page on http://{host}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.shutdown()


def command(*, port: int, intake: str, tally: str, widget_key: str, cases_file: Path) -> list[str]:
    """The command that serves the page on ``port`` (``make up`` and the widget tests run it)."""
    return [
        sys.executable,
        "-m",
        "devstack.demo_page",
        "--port",
        str(port),
        "--intake",
        intake,
        "--tally",
        tally,
        "--key",
        widget_key,
        "--cases",
        str(cases_file),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--intake", required=True)
    parser.add_argument("--tally", required=True)
    parser.add_argument("--key", required=True, help="a widget key allowed for this page's origin")
    parser.add_argument("--cases", type=Path, required=True, help="JSON list of case ids (bench/demo.py)")
    args = parser.parse_args()
    serve(args.host, args.port, args.intake, args.tally, args.key, args.cases)


if __name__ == "__main__":
    main()
