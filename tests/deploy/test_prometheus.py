"""Monitoring: Prometheus configs and alerts are valid and tested, every alert has a
runbook, and the alerts and the Grafana dashboard use only the metrics docs/metrics.md
promises.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "clameur.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
SERVICES = {"intake": 8001, "tally": 8002, "notify": 8003}
SEVERITIES = {"page", "ticket"}
# Series Prometheus makes itself, not promised by any service.
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


# ------------------------------------------------------------------------- helpers


def _yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} must be a mapping"
    return loaded


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def _promised_metrics() -> dict[str, str]:
    """Metric name -> type, from the table in docs/metrics.md."""
    promised = {}
    for line in METRICS_DOC.read_text().splitlines():
        row = re.match(r"\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*(\w+)\s*\|", line)
        if row:
            promised[row.group(1)] = row.group(2)
    return promised


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries, $__rate_interval included
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before in "._$":
            continue  # part of a number (1e3), a duration (15m) or a variable
        if text[match.end() :].lstrip().startswith("(") or match.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def _unpromised(names: set[str]) -> set[str]:
    promised = _promised_metrics()
    unknown = set()
    for name in names - PROMETHEUS_OWN:
        if name in promised:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base is None or promised.get(base) != "histogram":
            unknown.add(name)
    return unknown


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6}\s+(.+)", line)):
            anchors.add(_github_anchor(heading.group(1)))
    return anchors


def _section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert match, f"docs/operations.md has no '## {title}' section"
    return match.group(1)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", duration)
    assert parts and "".join(a + u for a, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(amount) * units[unit] for amount, unit in parts)


def _dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _dashboard_queries() -> list[str]:
    return [target["expr"] for panel in _dashboard_panels() for target in panel["targets"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; make test installs it)")
    return path


def _run(promtool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *arguments], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


# --------------------------------------------------------------- Prometheus itself


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_accepts_the_config(promtool: str, config: str) -> None:
    checked = _run(promtool, "check", "config", str(PROMETHEUS / config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_promtool_accepts_the_rules(promtool: str) -> None:
    checked = _run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in checked.stdout


def test_alert_unit_tests_pass(promtool: str) -> None:
    tested = _run(promtool, "test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@pytest.mark.parametrize(
    ("config", "host"),
    [
        ("prometheus.yml", None),
        ("prometheus.compose.yml", "service"),
    ],
)
def test_each_service_is_scraped_under_its_own_job(config: str, host: str | None) -> None:
    loaded = _yaml(PROMETHEUS / config)
    jobs = {job["job_name"]: job for job in loaded["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name, port in SERVICES.items():
        targets = [t for static in jobs[name]["static_configs"] for t in static["targets"]]
        expected = f"{name if host == 'service' else '127.0.0.1'}:{port}"
        assert targets == [expected], f"{config}: job {name}"
    assert loaded["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS / loaded["rule_files"][0]).is_file()


def test_compose_scrape_targets_are_compose_services() -> None:
    compose = _yaml(ROOT / "docker-compose.yml")["services"]
    for job in _yaml(PROMETHEUS / "prometheus.compose.yml")["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in compose, f"{target}: no compose service {host}"
            assert f"127.0.0.1:{port}:{port}" in compose[host]["ports"]


# --------------------------------------------------------------------------- alerts


def test_every_alert_has_a_for_a_severity_and_a_runbook() -> None:
    rules = _alert_rules()
    assert len(rules) >= 8
    anchors = _anchors(OPERATIONS.read_text())
    for rule in rules:
        name = rule["alert"]
        assert _seconds(rule["for"]) >= 60, f"{name}: a `for:` of at least a minute ignores blips"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        runbook = re.fullmatch(r"docs/operations\.md#([\w-]+)", annotations["runbook_url"])
        assert runbook, f"{name}: runbook_url must be docs/operations.md#<anchor>"
        assert runbook.group(1) in anchors, f"{name}: docs/operations.md has no heading #{runbook.group(1)}"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names))


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not() -> None:
    tests = _yaml(ALERT_TESTS)
    assert tests["rule_files"] == ["alerts.yml"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert (fired | quiet) <= names, f"tests name unknown alerts: {sorted((fired | quiet) - names)}"
    assert names - fired == set(), f"no test fires {sorted(names - fired)}"
    assert names - quiet == set(), f"no test keeps {sorted(names - quiet)} quiet"


@pytest.mark.parametrize(
    "metric",
    [
        "clameur_http_requests_total",  # intake error ratio
        "clameur_intake_rejections_total",  # broker rejections
        "clameur_http_request_duration_seconds_bucket",  # intake latency objective
        "clameur_tally_consumer_lag_records",
        "clameur_tally_accept_to_counted_seconds_bucket",
        "clameur_dlq_records_total",
        "clameur_notify_deliveries_pending",
        "clameur_notify_emails_failed_total",
        "clameur_outbox_pending_events",
        "up",
    ],
)
def test_the_operational_risks_are_alerted_on(metric: str) -> None:
    watched = set().union(*(metric_names(rule["expr"]) for rule in _alert_rules()))
    assert metric in watched, f"no alert watches {metric}"


def test_alerts_use_only_promised_metrics() -> None:
    for rule in _alert_rules():
        unknown = _unpromised(metric_names(rule["expr"]))
        assert not unknown, f"{rule['alert']} uses {sorted(unknown)}, which docs/metrics.md does not promise"


def test_metric_names_are_found_through_promql() -> None:
    expression = (
        'sum by (le) (rate(clameur_x_bucket{route="/v1/{case_id}", le="0.05"}[5m])) > 1e3 '
        "and on (service) max_over_time(clameur_y[$__rate_interval]) offset 15m or vector(0)"
    )
    assert metric_names(expression) == {"clameur_x_bucket", "clameur_y"}
    assert _unpromised({"clameur_tally_accept_to_counted_seconds_bucket", "up"}) == set()
    assert _unpromised({"clameur_tally_consumer_lag_records_bucket", "clameur_nope_total"}) == {
        "clameur_tally_consumer_lag_records_bucket",
        "clameur_nope_total",
    }


# ------------------------------------------------------------------------ dashboard


def test_dashboard_uses_only_promised_metrics() -> None:
    for expression in _dashboard_queries():
        unknown = _unpromised(metric_names(expression))
        assert not unknown, f"the dashboard queries {sorted(unknown)}, which docs/metrics.md does not promise"


@pytest.mark.parametrize(
    "metric",
    [
        "clameur_intake_signatures_accepted_total",
        "clameur_tally_signatures_counted_total",
        "clameur_intake_rejections_total",
        "clameur_http_request_duration_seconds_bucket",
        "clameur_tally_consumer_lag_records",
        "clameur_tally_accept_to_counted_seconds_bucket",
        "clameur_outbox_pending_events",
        "clameur_notify_deliveries_pending",
        "clameur_notify_emails_sent_total",
        "clameur_notify_emails_failed_total",
    ],
)
def test_dashboard_shows(metric: str) -> None:
    shown = set().union(*(metric_names(expression) for expression in _dashboard_queries()))
    assert metric in shown


@pytest.mark.parametrize(
    "histogram", ["clameur_http_request_duration_seconds", "clameur_tally_accept_to_counted_seconds"]
)
def test_dashboard_shows_p50_and_p99(histogram: str) -> None:
    quantiles = {
        match.group(1)
        for expression in _dashboard_queries()
        if f"{histogram}_bucket" in expression
        for match in [re.match(r"histogram_quantile\((0\.\d+),", expression)]
        if match
    }
    assert {"0.5", "0.99"} <= quantiles


def test_dashboard_panels_query_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    provisioned = {source["uid"] for source in _yaml(DATASOURCES)["datasources"]}
    assert provisioned == {"prometheus"}
    for panel in _dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]


def test_grafana_reaches_the_compose_prometheus() -> None:
    [source] = _yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in _yaml(ROOT / "docker-compose.yml")["services"]


# ----------------------------------------------------------------- the operations doc


def test_operations_doc_says_where_to_look_and_defers_capacity_to_benchmarks() -> None:
    markdown = OPERATIONS.read_text()
    assert "127.0.0.1:9090" in markdown
    capacity = _section(markdown, "Capacity")
    assert "benchmarks.md" in capacity
    assert not re.search(r"\b\d", capacity), "capacity figures come from docs/benchmarks.md, not from here"
    scaling = _section(markdown, "Scaling")
    for service in SERVICES:
        assert f"**{service}**" in scaling, f"the Scaling section says how to scale {service}"
