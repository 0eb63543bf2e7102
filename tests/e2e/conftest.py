"""Fixtures of the end-to-end tests: a real SMTP inbox and the three services as processes."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support import ServiceProcess, free_port


class Inbox:
    """A real SMTP server on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [message for message in self.messages if message["To"] and address in str(message["To"])]


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def stack(
    service_env: dict[str, str], inbox: tuple[Inbox, int], tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    _, smtp_port = inbox
    notify_port = free_port()
    env = {
        **service_env,
        "CLAMEUR_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "CLAMEUR_PUBLIC_URL": f"http://127.0.0.1:{notify_port}",
        "CLAMEUR_TALLY_GROUP_ID": f"{service_env['CLAMEUR_TOPIC_PREFIX']}tally",
        # As behind a load balancer: supporters are told apart by X-Forwarded-For.
        "CLAMEUR_TRUSTED_PROXIES": '["127.0.0.1/32"]',
    }
    services = {
        "tally": ServiceProcess("tally", env, tmp_path),
        "intake": ServiceProcess("intake", env, tmp_path),
        "notify": ServiceProcess("notify", env, tmp_path, port=notify_port),
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
