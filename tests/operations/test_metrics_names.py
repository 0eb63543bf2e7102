"""Each service exposes the metrics docs/metrics.md promises, with the promised types and labels.

The catalogue is read from docs/metrics.md itself, so the document and the services
cannot drift apart silently.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clameur.topics import Topics, ensure_topics
from tests.conftest import Infra, env_for
from tests.support import ROOT, ServiceProcess

pytestmark = pytest.mark.slow

SECTIONS = {"intake": "intake", "tally": "tally", "notify": "notify"}


@dataclass(frozen=True)
class Promise:
    name: str
    kind: str
    labels: frozenset[str]
    section: str


def _catalogue() -> list[Promise]:
    promises: list[Promise] = []
    section = "all"
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        heading = re.match(r"\|\s*\*\*(.+?)\*\*", line)
        if heading:
            section = heading.group(1).strip()
            continue
        row = re.match(r"\|\s*`(clameur_[a-z_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if row:
            labels = frozenset(re.findall(r"`(\w+)`", row.group(3)))
            promises.append(Promise(row.group(1), row.group(2), labels, section))
    return promises


CATALOGUE = _catalogue()


def _promised_to(service: str) -> list[Promise]:
    shared = {"all", "every consumer"} if service != "intake" else {"all"}
    own = [p for p in CATALOGUE if p.section == service or p.section in shared]
    if service == "tally":  # the outbox rows belong to tally's section of the table
        return own
    return [p for p in own if not p.name.startswith("clameur_outbox_")]


def test_the_catalogue_is_read() -> None:
    names = {p.name for p in CATALOGUE}
    assert "clameur_intake_signatures_accepted_total" in names
    assert "clameur_tally_accept_to_counted_seconds" in names
    assert "clameur_notify_emails_failed_total" in names
    assert all(p.kind in {"counter", "gauge", "histogram"} for p in CATALOGUE)
    assert all(not p.name.endswith("_total") or p.kind == "counter" for p in CATALOGUE)


@pytest.fixture(scope="module")
def scraped(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The three services on this module's own topics, scraped once they are ready."""
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    asyncio.run(ensure_topics(infra.kafka, topics, signature_partitions=3))
    service_env = env_for(infra, topics)
    logs = tmp_path_factory.mktemp("services")
    processes = [ServiceProcess(name, service_env, logs) for name in SECTIONS]
    try:
        for process in processes:
            process.start(wait_ready=False)
        for process in processes:
            process.wait_ready(timeout=90)
        yield {p.service: httpx.get(f"{p.url}/metrics", timeout=5).text for p in processes}
    finally:
        for process in processes:
            process.stop()


@pytest.mark.parametrize("service", list(SECTIONS))
def test_every_promised_metric_is_exposed_with_its_type(service: str, scraped: dict[str, str]) -> None:
    families = {family.name: family for family in text_string_to_metric_families(scraped[service])}
    missing, wrong = [], []
    for promise in _promised_to(service):
        # The parser names counters without their _total suffix.
        name = promise.name.removesuffix("_total") if promise.kind == "counter" else promise.name
        family = families.get(name)
        if family is None:
            missing.append(promise.name)
        elif family.type != promise.kind:
            wrong.append(f"{promise.name}: {family.type}, promised {promise.kind}")
    assert not missing, f"{service} does not expose {missing}"
    assert not wrong, wrong


@pytest.mark.parametrize("service", list(SECTIONS))
def test_no_label_carries_personal_data(service: str, scraped: dict[str, str]) -> None:
    for family in text_string_to_metric_families(scraped[service]):
        for sample in family.samples:
            assert not {"email", "name", "supporter_key", "first_name", "last_name"} & set(sample.labels)
            assert not any("@" in value for value in sample.labels.values()), sample


def _assert_labels(service: str, scraped: dict[str, str]) -> None:
    families = {family.name: family for family in text_string_to_metric_families(scraped[service])}
    for promise in _promised_to(service):
        name = promise.name.removesuffix("_total") if promise.kind == "counter" else promise.name
        for sample in families[name].samples:
            labels = set(sample.labels) - {"le", "quantile"}
            assert labels == set(promise.labels), (
                f"{promise.name} labels {labels}, promised {set(promise.labels)}"
            )


@pytest.mark.parametrize("service", list(SECTIONS))
def test_labels_are_the_promised_ones(service: str, scraped: dict[str, str]) -> None:
    _assert_labels(service, scraped)
