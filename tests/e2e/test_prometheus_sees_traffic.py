"""A real Prometheus scrapes the three services and shows the traffic an operator watches."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import create_case
from tests.support import ROOT, ServiceProcess, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus(stack: dict[str, ServiceProcess], tmp_path: Path) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed (make test installs it)")
    targets = "\n".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{service.port}']"
        for name, service in stack.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {ROOT / 'deploy' / 'prometheus' / 'alerts.yml'}\n"
        f"scrape_configs:\n{targets}\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _query(prometheus: str, promql: str) -> float | None:
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    results = answer.get("data", {}).get("result", [])
    if not results:
        return None
    return float(results[0]["value"][1])


def test_prometheus_shows_intake_rate_counted_rate_and_lag(
    stack: dict[str, ServiceProcess], prometheus: str, new_id: Callable[..., str]
) -> None:
    intake, tally = stack["intake"].url, stack["tally"].url
    case_id = new_id("sengwer")
    create_case(tally, case_id, title={"en": "The Sengwer"}, goal=1000, default_locale="en")

    def sign(n: int) -> int:
        body = {"first_name": "Kiptum", "last_name": "Sengwer", "email": f"s{n}@example.org", "country": "KE"}
        supporter_ip = {"X-Forwarded-For": f"198.51.100.{n % 250}"}
        url = f"{intake}/v1/cases/{case_id}/signatures"
        return httpx.post(url, json=body, headers=supporter_ip, timeout=10).status_code

    wait_until(lambda: sign(0) == 202, timeout=20, what="intake to know the case")
    wait_until(lambda: _query(prometheus, "up{job='intake'}") == 1.0, timeout=30, what="a first scrape")
    for n in range(1, 120):
        assert sign(n) == 202

    wait_until(
        lambda: (_query(prometheus, "sum(increase(clameur_intake_signatures_accepted_total[1m]))") or 0) > 0,
        timeout=30,
        what="the intake rate in Prometheus",
    )
    wait_until(
        lambda: (_query(prometheus, "sum(increase(clameur_tally_signatures_counted_total[1m]))") or 0) > 0,
        timeout=30,
        what="the counted rate in Prometheus",
    )
    wait_until(
        lambda: _query(prometheus, "max(clameur_tally_consumer_lag_records)") is not None,
        timeout=30,
        what="the lag series in Prometheus",
    )
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert sum(len(group["rules"]) for group in rules) >= 8, "the alert rules are loaded"
