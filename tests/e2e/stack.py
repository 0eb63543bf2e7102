"""The three services as real processes on one test's topics, and the traffic the tests drive.

Shared by the end-to-end tests and the metrics checks, which need the services to have
handled real traffic before their labelled series exist.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from notify.supporters import supporter_key

from clameur.database import migrate
from devstack.databases import create_database, drop_database
from devstack.mailsink import Received, SmtpSink
from tests.conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from tests.support import ServiceProcess, free_port, wait_until

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@contextmanager
def running_stack(
    service_env: Mapping[str, str],
    smtp_port: int,
    log_dir: Path,
    env_of: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[dict[str, ServiceProcess]]:
    """Tally, intake and notify started (and ready), mailing through ``smtp_port``; stopped on exit.

    ``env_of`` adds variables of one service's own (``{"intake": {...}}``: its Kafka login).
    """
    notify_port = free_port()
    env = {
        **service_env,
        "CLAMEUR_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "CLAMEUR_PUBLIC_URL": f"http://127.0.0.1:{notify_port}",
        "CLAMEUR_TALLY_GROUP_ID": f"{service_env['CLAMEUR_TOPIC_PREFIX']}tally",
        # As behind a load balancer: supporters are told apart by X-Forwarded-For.
        "CLAMEUR_TRUSTED_PROXIES": '["127.0.0.1/32"]',
    }
    own = env_of or {}
    services = {
        "tally": ServiceProcess("tally", {**env, **own.get("tally", {})}, log_dir),
        "intake": ServiceProcess("intake", {**env, **own.get("intake", {})}, log_dir),
        "notify": ServiceProcess("notify", {**env, **own.get("notify", {})}, log_dir, port=notify_port),
    }
    try:
        for service in services.values():
            service.start(wait_ready=False)
        for service in services.values():
            service.wait_ready(timeout=90)
        yield services
    finally:
        for service in services.values():
            service.stop()


def create_case(tally: str, case_id: str, **fields: Any) -> None:
    """A new case through tally's admin API (``fields`` complete or replace the defaults)."""
    body = {
        "id": case_id,
        "title": {"fr": "Nawal Benaissa : stop au harcèlement", "en": "Nawal Benaissa: stop the harassment"},
        "goal": 50,
        "default_locale": "fr",
        "confirmation": "none",  # counted at once: these tests are not about confirmation
        **fields,
    }
    created = httpx.post(f"{tally}/v1/admin/cases", headers=ADMIN, json=body, timeout=10)
    assert created.status_code == 201, created.text


def declare_victory(tally: str, case_id: str, headline: Mapping[str, str]) -> None:
    """The case is won: tally's admin API announces ``headline`` (per locale) and thanks everyone."""
    answer = httpx.post(
        f"{tally}/v1/admin/cases/{case_id}/victory",
        headers=ADMIN,
        json={
            "headline": dict(headline),
            "message": {"fr": "Merci à toutes et tous.", "en": "Thank you all."},
        },
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def sign(
    intake: str, case_id: str, n: int, *, email_of: Callable[[int], str], **fields: object
) -> httpx.Response:
    """Supporter ``n``'s signature (``fields`` complete or replace the form's)."""
    return sign_from(intake, case_id, n, email_of(n), None, fields)


def sign_from(
    intake: str, case_id: str, n: int, email: str, client_ip: str | None, fields: Mapping[str, object]
) -> httpx.Response:
    """Supporter ``n``'s signature with ``email``, from ``client_ip`` as the load balancer says
    (X-Forwarded-For; many supporters then stay under intake's per-address rate limit)."""
    body = {
        "first_name": f"Supporter{n}",
        "last_name": "Test",
        "email": email,
        "country": ["FR", "MA", "BE"][n % 3],
        **fields,
    }
    headers = {"X-Forwarded-For": client_ip} if client_ip else {}
    return httpx.post(f"{intake}/v1/cases/{case_id}/signatures", json=body, headers=headers, timeout=10)


def until_intake_answers(
    status: int, intake: str, case_id: str, n: int, *, email_of: Callable[[int], str], timeout: float
) -> None:
    """Sign as supporter ``n`` until intake answers ``status`` (it learns of cases from cases.v1)."""
    wait_until(
        lambda: sign(intake, case_id, n, email_of=email_of).status_code == status,
        timeout=timeout,
        what=f"intake to answer {status} for {case_id}",
    )


@contextmanager
def own_database(server_dsn: str, name: str) -> Iterator[str]:
    """A database of this test's own (tally and notify schemas migrated), dropped on exit:
    a dump or a rebuild of it holds this test's supporters and no other test's."""
    url = asyncio.run(create_database(server_dsn, name))
    try:
        for schema in ("tally", "notify"):
            migrate(schema, url)
        yield url
    finally:
        with suppress(Exception):
            asyncio.run(drop_database(server_dsn, name))


@dataclass(frozen=True)
class OwnStack:
    """The three services' settings on a database of the test's own (the ``own_stack`` fixture)."""

    database: str
    database_url: str
    env: dict[str, str]
    smtp_port: int
    log_dir: Path

    def running(self) -> AbstractContextManager[dict[str, ServiceProcess]]:
        """The services started on :attr:`env`; stopped on exit (the database stays to the end)."""
        return running_stack(self.env, self.smtp_port, self.log_dir)


def public_case(tally: str, case_id: str) -> dict[str, Any]:
    """The case's public document (``total``, ``pending``, ``by_country``, ``by_action``...)."""
    return case_document(tally, case_id)


def case_document(tally: str, case_id: str, *, admin: bool = False) -> dict[str, Any]:
    """The case as the public sees it, or (``admin``) with its exact counts."""
    path = f"/v1/admin/cases/{case_id}" if admin else f"/v1/cases/{case_id}"
    answer = httpx.get(f"{tally}{path}", headers=ADMIN if admin else {}, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@dataclass(frozen=True)
class Supporter:
    """A supporter no other test or run has: every personal field is unique."""

    first_name: str
    last_name: str
    email: str
    postal_code: str

    @classmethod
    def unique(cls) -> Supporter:
        letters = "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:12])
        return cls(
            first_name=f"Ysaline{letters[:6]}",
            last_name=f"Tehrani{letters[6:]}",
            email=f"ysaline.{letters}@example.org",
            postal_code=f"QX{uuid.uuid4().int % 10**8:08d}",
        )

    @property
    def needles(self) -> list[bytes]:
        return [f.encode() for f in (self.first_name, self.last_name, self.email, self.postal_code)]

    @property
    def never_published(self) -> list[bytes]:
        return [self.last_name.encode(), self.postal_code.encode()]

    @property
    def key(self) -> str:
        return supporter_key(TEST_SECRET, self.email)

    def form(self, **fields: object) -> dict[str, object]:
        """The widget's body (``fields`` complete or replace it)."""
        return {
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "postal_code": self.postal_code,
            "country": "IR",
            "locale": "en",
            "consent": {"updates": True},
            **fields,
        }


def sealed_contact(database_url: str, key: str) -> bytes | None:
    sealed: bytes | None = fetchval(
        database_url, "SELECT email_sealed FROM notify.contacts WHERE supporter_key = $1", key
    )
    return sealed


def fetchval(database_url: str, query: str, *args: Any) -> Any:
    async def fetch() -> Any:
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetchval(query, *args)
        finally:
            await connection.close()

    value = asyncio.run(fetch())
    return bytes(value) if isinstance(value, memoryview | bytearray) else value


def counts_become(tally: str, case_id: str, timeout: float = 30, **expected: object) -> dict[str, Any]:
    """Poll the public document until its fields are ``expected`` (``total=1, pending=0``); return it."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(public_case(tally, case_id))
        return all(seen.get(name) == value for name, value in expected.items())

    try:
        wait_until(reached, timeout=timeout, interval=0.2, what=f"{case_id} to show {expected}")
    except AssertionError as error:
        raise AssertionError(f"{error}; last seen {seen}") from None
    return seen


_LINK = re.compile(r"(https?://[^/\s]+/v1/(confirm|reject)/[A-Za-z0-9_.\-]+)")


def confirmation_links(mail: Received) -> dict[str, str]:
    """The confirm and reject links of a confirmation email (its plain-text part), by action."""
    text = mail.message.get_body(("plain",))
    assert text is not None
    found = {action: url for url, action in _LINK.findall(text.get_content())}
    assert set(found) == {"confirm", "reject"}, text.get_content()
    return found


def mails_arrive(sink: SmtpSink, address: str, count: int, timeout: float = 60) -> list[Received]:
    """Wait until ``count`` emails reached ``address`` at the sink; return them, oldest first."""
    wait_until(lambda: len(sink.to(address)) >= count, timeout=timeout, what=f"{count} emails to {address}")
    return sink.to(address)


def confirm_by_email(sink: SmtpSink, address: str) -> None:
    """What a supporter does with their confirmation email: open its confirm link."""
    (mail,) = mails_arrive(sink, address, 1)[:1]
    opened = httpx.get(confirmation_links(mail)["confirm"], timeout=10)
    assert opened.status_code == 200, opened.text
