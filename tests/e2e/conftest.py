"""Fixtures of the end-to-end tests: the three services as processes, mailing the SMTP sink."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from devstack.mailsink import SmtpSink
from tests.conftest import Infra
from tests.e2e.stack import OwnStack, own_database, running_stack
from tests.support import ServiceProcess


@pytest.fixture
def stack(
    service_env: dict[str, str], smtp_sink: SmtpSink, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    with running_stack(service_env, smtp_sink.port, tmp_path) as services:
        yield services


@pytest.fixture
def own_stack(
    infra: Infra, service_env: dict[str, str], smtp_sink: SmtpSink, tmp_path: Path
) -> Iterator[Callable[..., OwnStack]]:
    """``own_stack(CLAMEUR_X="1")``: a database of the test's own (migrated, dropped at the
    end) and the services' settings on it, with these added; ``.running()`` starts them."""
    with ExitStack() as databases:

        def make(**settings: str) -> OwnStack:
            name = f"clameur_e2e_{uuid.uuid4().hex[:8]}"
            url = databases.enter_context(own_database(infra.server_dsn, name))
            env = {**service_env, "CLAMEUR_DATABASE_URL": url, **settings}
            return OwnStack(name, url, env, smtp_sink.port, tmp_path)

        yield make
