"""Each service exposes the metrics docs/metrics.md promises, with the promised types and labels.

The catalogue is read from docs/metrics.md itself, so the document and the services
cannot drift apart silently.  The services are scraped after real traffic (signatures
counted, an email sent, one refused, an unsubscription, a rejected request, a poison
record), so that their labelled series exist: a label check over a metric without
children would prove nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clameur.kafka import create_producer
from clameur.topics import Topics, ensure_topics
from devstack.mailsink import SmtpSink, on_loopback
from tests.conftest import Infra, env_for
from tests.e2e.stack import ADMIN, confirm_by_email, create_case, running_stack, sign, until_intake_answers
from tests.support import ROOT, ServiceProcess, metric, wait_until

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
    own = [p for p in CATALOGUE if service in p.section.split(", ") or p.section in shared]
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


# Who signs in the traffic: none of this may reach a label value.
FIRST_NAMES = ("Supporter0", "Supporter1", "Supporter2")
LAST_NAME = "Okonkwo-Lefebvre"


def _email(n: int) -> str:
    return f"metrics.supporter{n}@example.org"


async def _publish_poison(kafka: str, topic: str) -> None:
    producer = create_producer(kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"not an event", key=b"poison")
    finally:
        await producer.stop()


def _drive_traffic(services: dict[str, ServiceProcess], sink: SmtpSink, kafka: str, topics: Topics) -> None:
    """What the e2e tests do, and the faults a labelled series needs: proven to have happened."""
    intake, tally, notify = (services[name].url for name in ("intake", "tally", "notify"))
    case_id = f"metrics-{uuid.uuid4().hex[:10]}"
    create_case(tally, case_id, milestones=[4])
    sink.refuse(_email(2), 550)  # a permanent failure: clameur_notify_emails_failed_total
    until_intake_answers(202, intake, case_id, 0, email_of=_email, timeout=20)
    for n in (1, 2):
        consenting = sign(intake, case_id, n, email_of=_email, last_name=LAST_NAME, consent={"updates": True})
        assert consenting.status_code == 202, consenting.text
    # News goes only to confirmed addresses: supporter 1 confirms (2's email is refused).
    confirm_by_email(sink, _email(1))
    assert sign(intake, case_id, 3, email_of=_email).status_code == 202  # crosses the milestone
    assert sign(intake, case_id, 4, email_of=_email, country="not a country").status_code == 422
    asyncio.run(_publish_poison(kafka, topics.signatures))

    wait_until(
        lambda: httpx.get(f"{tally}/v1/cases/{case_id}", timeout=5).json()["total"] == 4,
        timeout=30,
        what="tally to count the four signatures",
    )
    wait_until(lambda: len(sink.to(_email(1))) >= 2, timeout=60, what="the milestone email")
    link = str(sink.to(_email(1))[1].message["List-Unsubscribe"]).strip("<>")
    one_click = {"content-type": "application/x-www-form-urlencoded"}
    unsubscribed = httpx.post(link, content=b"List-Unsubscribe=One-Click", headers=one_click, timeout=10)
    assert unsubscribed.status_code == 200, unsubscribed.text
    wait_until(
        lambda: (
            metric(httpx.get(f"{notify}/metrics", timeout=5).text, "clameur_notify_emails_failed_total") > 0
        ),
        timeout=60,
        what="notify to give up on the refused address",
    )
    # An admin action on notify (tally's was the case), and a wrong admin token on each.
    erased = httpx.post(
        f"{notify}/v1/admin/supporters/erase", json={"email": _email(3)}, headers=ADMIN, timeout=30
    )
    assert erased.status_code == 200, erased.text
    wrong = {"Authorization": "Bearer not-the-token"}
    for admin_url in (f"{tally}/v1/admin/cases", f"{notify}/v1/admin/supporters/erase"):
        assert httpx.post(admin_url, json={}, headers=wrong, timeout=10).status_code == 401


def _family_name(promise: Promise) -> str:
    # The parser names counters without their _total suffix.
    return promise.name.removesuffix("_total") if promise.kind == "counter" else promise.name


def _missing_series(service: str, text: str) -> list[str]:
    """The promised labelled metrics of ``service`` that have no series in ``text``."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    missing = []
    for promise in _promised_to(service):
        family = families.get(_family_name(promise))
        if promise.labels and (family is None or not family.samples):
            missing.append(promise.name)
    return missing


def _scrape(services: dict[str, ServiceProcess]) -> dict[str, str]:
    return {name: httpx.get(f"{p.url}/metrics", timeout=5).text for name, p in services.items()}


@pytest.fixture(scope="module")
def scraped(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The three services on this module's own topics, scraped after real traffic."""
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    asyncio.run(ensure_topics(infra.kafka, topics, signature_partitions=3))
    logs: Path = tmp_path_factory.mktemp("services")
    with on_loopback() as sink, running_stack(env_for(infra, topics), sink.port, logs) as services:
        _drive_traffic(services, sink, infra.kafka, topics)
        # Gauges and the DLQ move on their own schedule: give them a moment, the test judges.
        for _ in range(60):
            pages = _scrape(services)
            if not any(_missing_series(name, page) for name, page in pages.items()):
                break
            time.sleep(0.5)
        yield pages


@pytest.mark.parametrize("service", list(SECTIONS))
def test_the_traffic_made_every_labelled_series(service: str, scraped: dict[str, str]) -> None:
    assert not _missing_series(service, scraped[service]), f"{service}: no series yet, labels unchecked"


@pytest.mark.parametrize("service", list(SECTIONS))
def test_every_promised_metric_is_exposed_with_its_type(service: str, scraped: dict[str, str]) -> None:
    families = {family.name: family for family in text_string_to_metric_families(scraped[service])}
    missing, wrong = [], []
    for promise in _promised_to(service):
        family = families.get(_family_name(promise))
        if family is None:
            missing.append(promise.name)
        elif family.type != promise.kind:
            wrong.append(f"{promise.name}: {family.type}, promised {promise.kind}")
    assert not missing, f"{service} does not expose {missing}"
    assert not wrong, wrong


@pytest.mark.parametrize("service", list(SECTIONS))
def test_no_label_carries_personal_data(service: str, scraped: dict[str, str]) -> None:
    personal = [_email(n).lower() for n in range(4)] + [name.lower() for name in (*FIRST_NAMES, LAST_NAME)]
    for family in text_string_to_metric_families(scraped[service]):
        for sample in family.samples:
            assert not {"email", "name", "supporter_key", "first_name", "last_name"} & set(sample.labels)
            assert not any("@" in value for value in sample.labels.values()), sample
            values = " ".join(sample.labels.values()).lower()
            assert not any(data in values for data in personal), sample


def _assert_labels(service: str, scraped: dict[str, str]) -> None:
    families = {family.name: family for family in text_string_to_metric_families(scraped[service])}
    for promise in _promised_to(service):
        for sample in families[_family_name(promise)].samples:
            labels = set(sample.labels) - {"le", "quantile"}
            assert labels == set(promise.labels), (
                f"{promise.name} labels {labels}, promised {set(promise.labels)}"
            )


@pytest.mark.parametrize("service", list(SECTIONS))
def test_labels_are_the_promised_ones(service: str, scraped: dict[str, str]) -> None:
    _assert_labels(service, scraped)
