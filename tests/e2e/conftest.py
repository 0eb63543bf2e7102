"""Fixtures of the end-to-end tests: the three services as processes, mailing the SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.mailsink import SmtpSink
from tests.e2e.stack import running_stack
from tests.support import ServiceProcess


@pytest.fixture
def stack(
    service_env: dict[str, str], smtp_sink: SmtpSink, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    with running_stack(service_env, smtp_sink.port, tmp_path) as services:
        yield services
