"""The widget in a real browser against the real stack.

Intake, tally and notify run as processes (as in tests/e2e) on one set of topics for the
module; each test makes its own cases.  The campaign page is served by a small HTTP
server on another port, hence another origin than intake's, under a strict
Content-Security-Policy (no inline script or style; scripts from intake only; requests
to intake and tally only), with a widget key allowed for that origin.  The browser is
Debian's chromium (``scripts/bootstrap`` installs it), driven by Playwright with the
browser's path given: nothing is downloaded.

Screenshots of every state land in ``.cache/test-output/widget/<test>/`` (or under
``$CLAMEUR_TEST_OUTPUT``) for a person to look at.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from clameur.topics import Topics, ensure_topics
from devstack.mailsink import on_loopback
from tests.conftest import TEST_ADMIN_TOKEN, Infra, env_for
from tests.e2e.stack import declare_victory
from tests.support import ROOT, ServiceProcess, delete_topics, free_port, wait_until

CHROMIUM = os.environ.get("CLAMEUR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUNDLE = ROOT / "widget" / "dist" / "widget.js"
AXE = ROOT / "widget" / "node_modules" / "axe-core" / "axe.min.js"
OUTPUT = Path(os.environ.get("CLAMEUR_TEST_OUTPUT", ROOT / ".cache" / "test-output")) / "widget"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1100, "height": 900}

PAGE_CSS = b"""
/* A campaign page's own styles, some hostile: none may reach into the widget. */
body { font-family: Georgia, serif; margin: 0 auto; max-width: 46rem; padding: 1rem; color: #222; }
h1 { font-size: 1.6rem; }
div { color: #f0f; }
input, button, select { display: none !important; }
"""


T = TypeVar("T")


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on a thread of its own.

    Playwright's sync API keeps an event loop running on the test's thread, where
    ``asyncio.run`` is refused.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class HostPages:
    """The campaign site: pages by path, served on its own port with a strict CSP."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[bytes, str | None]] = {}
        self.csp = "default-src 'none'"
        self.port = free_port()
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/favicon.ico":
                    self._send(204, "image/x-icon", b"")
                elif path == "/page.css":
                    self._send(200, "text/css", PAGE_CSS)
                elif path in pages.pages:
                    page, csp = pages.pages[path]
                    self._send(200, "text/html; charset=utf-8", page, csp=csp or pages.csp)
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status: int, media_type: str, body: bytes, csp: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                if csp:
                    self.send_header("Content-Security-Policy", csp)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, html: str, csp: str | None = None) -> str:
        """Serve ``html`` at a new path (under ``csp``, else the site's); returns its URL."""
        path = f"/{uuid.uuid4().hex[:8]}.html"
        self.pages[path] = (html.encode(), csp)
        return self.origin + path


@dataclass
class WidgetStack:
    intake: str
    tally: str
    notify: str
    host: HostPages
    widget_key: str
    infra: Infra
    demo_page_port: int
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def create_case(self, case_id: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": case_id,
            "title": {
                "fr": "Nawal Benaissa : stop au harcèlement",
                "en": "Nawal Benaissa: stop the harassment",
            },
            "goal": 20_000,
            "milestones": [1_000, 2_500, 5_000],
            "actions": ["signature"],
            "default_locale": "fr",
            "target": "Ministère de l'Intérieur du Maroc",
            "confirmation": "none",  # counted at once: these tests are not about confirmation
            **changes,
        }
        created = httpx.post(f"{self.tally}/v1/admin/cases", headers=ADMIN, json=body, timeout=10)
        assert created.status_code == 201, created.text
        # Intake follows cases.v1: an empty body is a 422 once it knows the case, 404 before.
        wait_until(
            lambda: (
                httpx.post(f"{self.intake}/v1/cases/{case_id}/signatures", json={}, timeout=5).status_code
                == 422
            ),
            timeout=20,
            what=f"intake to know {case_id}",
        )
        return body

    def case(self, case_id: str) -> dict[str, Any]:
        """The public case document, as the widget reads it."""
        return dict(httpx.get(f"{self.tally}/v1/cases/{case_id}", timeout=5).json())

    def total(self, case_id: str) -> int:
        return int(self.case(case_id)["total"])

    def declare_victory(self, case_id: str) -> None:
        headline = {"fr": "Nawal Benaissa est libre !", "en": "Nawal Benaissa is free!"}
        declare_victory(self.tally, case_id, headline)

    def page_html(self, body: str, *, lang: str = "fr", title: str = "Écrire pour les droits") -> str:
        return (
            f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{title}</title><link rel="stylesheet" href="/page.css"></head>'
            f"<body><main><h1>{title}</h1>{body}"
            f'<script src="{self.intake}/v1/widget.js" async></script></main></body></html>'
        )

    def petition(self, case_id: str, lang: str = "fr", **data: str) -> str:
        extra = "".join(f' data-{name.replace("_", "-")}="{value}"' for name, value in data.items())
        return (
            f'<div class="clameur-petition" data-case="{case_id}" data-lang="{lang}" '
            f'data-key="{self.widget_key}"{extra}></div>'
        )

    def petition_page(self, case_id: str, *, lang: str = "fr", after: str = "") -> str:
        """The URL of a campaign page in ``lang`` showing the case's petition, then ``after``."""
        return self.host.add(self.page_html(self.petition(case_id, lang=lang) + after, lang=lang))

    def fetch_rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        import asyncpg

        async def run() -> list[dict[str, Any]]:
            connection = await asyncpg.connect(self.infra.database_url)
            try:
                return [dict(row) for row in await connection.fetch(query, *args)]
            finally:
                await connection.close()

        return run_apart(run())


def _ensure_bundle() -> None:
    if not BUNDLE.exists() or not AXE.exists():
        # `make test` builds it first; a lone pytest run builds it here.
        subprocess.run(["bash", str(ROOT / "scripts" / "build-widget")], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def widget_stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WidgetStack]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM} (scripts/bootstrap installs Debian's chromium as root)")
    _ensure_bundle()
    logs = tmp_path_factory.mktemp("widget-stack")
    topics = Topics(prefix=f"w{uuid.uuid4().hex[:10]}.")
    run_apart(ensure_topics(infra.kafka, topics, signature_partitions=3))
    closing = ExitStack()
    inbox = closing.enter_context(on_loopback())
    host = HostPages()
    host.thread.start()
    tally_port, notify_port, demo_page_port = free_port(), free_port(), free_port()
    widget_key = f"pk_test_{uuid.uuid4().hex[:12]}"
    origins = [host.origin, f"http://127.0.0.1:{demo_page_port}"]
    env = {
        **env_for(infra, topics),
        "CLAMEUR_LOG_JSON": "true",
        "CLAMEUR_SMTP_URL": f"smtp://127.0.0.1:{inbox.port}",
        "CLAMEUR_PUBLIC_URL": f"http://127.0.0.1:{notify_port}",
        "CLAMEUR_TALLY_GROUP_ID": f"{topics.prefix}tally",
        "CLAMEUR_WIDGET_KEYS": json.dumps({widget_key: origins}),
        "CLAMEUR_PUBLIC_READS_URL": f"http://127.0.0.1:{tally_port}",
    }
    services = {
        "tally": ServiceProcess("tally", env, logs, port=tally_port),
        "intake": ServiceProcess("intake", env, logs),
        "notify": ServiceProcess("notify", env, logs, port=notify_port),
    }
    # What a careful campaign site sends: scripts and requests to Clameur only, no inline
    # script or style anywhere.
    host.csp = (
        f"default-src 'none'; script-src {services['intake'].url}; "
        f"connect-src {services['intake'].url} {services['tally'].url}; "
        "style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'"
    )
    try:
        for service in services.values():
            service.start(wait_ready=False)
        for service in services.values():
            service.wait_ready(timeout=90)
        yield WidgetStack(
            intake=services["intake"].url,
            tally=services["tally"].url,
            notify=services["notify"].url,
            host=host,
            widget_key=widget_key,
            infra=infra,
            demo_page_port=demo_page_port,
            services=services,
        )
    finally:
        for service in services.values():
            service.stop()
        host.server.shutdown()
        closing.close()
        run_apart(delete_topics(infra.kafka, topics))


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright, widget_stack: WidgetStack) -> Iterator[Browser]:
    launched = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


@dataclass
class Visit:
    """One test's browser tab, what it logged, where it went, and its screenshots."""

    context: BrowserContext
    page: Page
    folder: Path
    console_errors: list[str]
    request_origins: set[str]

    def phone(self) -> None:
        self.page.set_viewport_size(PHONE)

    def shoot(self, state: str) -> Path:
        path = self.folder / f"{state}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def visit(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Visit]:
    folder = OUTPUT / request.node.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    context = browser.new_context(viewport=DESKTOP, locale="fr-FR")
    page = context.new_page()
    errors: list[str] = []
    origins: set[str] = set()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda sent: origins.add("{0.scheme}://{0.netloc}".format(urlsplit(sent.url))))
    try:
        yield Visit(context, page, folder, errors, origins)
    finally:
        context.close()


def eventually_true(check: Any, within: float, what: str) -> float:
    """Wait for ``check()``; returns the seconds it took."""
    started = time.monotonic()
    wait_until(check, timeout=within, interval=0.05, what=what)
    return time.monotonic() - started
