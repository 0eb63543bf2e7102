"""docker-compose.yml and the image it builds hold together without a Docker engine.

Every path compose refers to exists, secrets cannot default, nothing listens beyond
this machine, and every service waits for what it needs to be healthy (or done).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from clameur.settings import DEV_ADMIN_TOKEN, DEV_SECRET, ClameurSettings
from tests.support import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SERVICES = {"intake": 8001, "tally": 8002, "notify": 8003}
CLAMEUR_CONTAINERS = (*SERVICES, "provision")
REQUIRED_SECRETS = ("CLAMEUR_SECRET", "CLAMEUR_ADMIN_TOKEN")
HEALTH_GATES = {"service_healthy", "service_completed_successfully"}
DRAIN_SECONDS = 30


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict), "docker-compose.yml must be a mapping"
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or a list of KEY=value."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(str(item).split("=", 1) for item in raw)
    return {str(key): str(value) for key, value in raw.items()}


def _build(service: dict[str, Any]) -> tuple[Path, Path]:
    """The build context and Dockerfile of a service, as paths on this machine."""
    build = service["build"]
    if isinstance(build, str):
        return ROOT / build, ROOT / build / "Dockerfile"
    context = ROOT / build.get("context", ".")
    return context, context / build.get("dockerfile", "Dockerfile")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * units[unit]
    return total


def test_every_build_context_and_dockerfile_exists() -> None:
    built = {name: service for name, service in _services().items() if "build" in service}
    assert set(CLAMEUR_CONTAINERS) <= set(built), "the services and provision are built from this repo"
    for name, service in built.items():
        context, dockerfile = _build(service)
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert dockerfile == DOCKERFILE, f"{name}: every Clameur image comes from {DOCKERFILE}"


def test_every_mounted_path_exists_and_every_named_volume_is_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    bind_mounts = 0
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source, kind = str(volume.get("source", "")), volume.get("type", "volume")
            else:
                source = str(volume).split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/")) else "volume"
            if kind == "bind":
                bind_mounts += 1
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses volume {source!r}, not declared under volumes:"
    assert bind_mounts >= 3, "Prometheus and Grafana mount their configuration from deploy/"


def test_prometheus_is_started_with_a_config_file_that_is_mounted() -> None:
    prometheus = _services()["prometheus"]
    flags = [str(arg) for arg in prometheus["command"] if str(arg).startswith("--config.file=")]
    assert len(flags) == 1, "prometheus names its config file"
    config_in_container = flags[0].split("=", 1)[1]
    for volume in prometheus["volumes"]:
        source, target = str(volume).split(":")[:2]
        if config_in_container.startswith(target.rstrip("/") + "/"):
            on_host = ROOT / source / config_in_container[len(target.rstrip("/")) + 1 :]
            assert on_host.is_file(), f"{config_in_container} is {on_host}, which does not exist"
            assert on_host.name == "prometheus.compose.yml", "compose scrapes by service name"
            return
    pytest.fail(f"{config_in_container} is not inside any volume mounted into prometheus")


def test_grafana_loads_the_dashboards_directory_it_is_given() -> None:
    grafana = _services()["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/clameur.yml").read_text())
    path_in_container = providers["providers"][0]["options"]["path"]
    assert path_in_container in mounts, f"grafana reads dashboards from {path_in_container}: mount it"
    assert (ROOT / mounts[path_in_container] / "clameur.json").is_file()
    assert mounts.get("/etc/grafana/provisioning") == "./deploy/grafana/provisioning"


def test_required_secrets_cannot_fall_back_to_a_default() -> None:
    for name in CLAMEUR_CONTAINERS:
        environment = _environment(_services()[name])
        for secret in REQUIRED_SECRETS:
            assert secret in environment, f"{name} needs {secret}"
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", environment[secret]), (
                f"{name}: {secret} must be ${{{secret}:?message}} so compose refuses to start without it"
            )
    text = COMPOSE_FILE.read_text()
    for secret in REQUIRED_SECRETS:
        assert not re.search(rf"\$\{{{secret}:?-", text), f"{secret} must have no default anywhere"


def _interpolated(value: str, given: dict[str, str]) -> str:
    """``value`` as compose would pass it: ``${NAME:-default}`` and ``${NAME:?message}`` filled."""

    def fill(found: re.Match[str]) -> str:
        name, kind, rest = found.group(1), found.group(2), found.group(3)
        if name in given:
            return given[name]
        assert kind == ":-", f"{name} has no default and the test gave none"
        return rest

    return re.sub(r"\$\{(\w+)(:[-?])([^}]*)\}", fill, value)


@pytest.mark.parametrize("env", ["dev", "production"])
def test_a_dev_secret_given_to_compose_stops_the_service(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    # Compose listens on 0.0.0.0 inside the container: the public dev values must not pass,
    # not even with CLAMEUR_ENV left at its dev default.
    given = {"CLAMEUR_SECRET": DEV_SECRET, "CLAMEUR_ADMIN_TOKEN": DEV_ADMIN_TOKEN, "CLAMEUR_ENV": env}
    for name, value in _environment(_services()["intake"]).items():
        monkeypatch.setenv(name, _interpolated(value, given))
    with pytest.raises(ValidationError, match="CLAMEUR_SECRET"):
        ClameurSettings()


def test_published_ports_are_bound_to_localhost() -> None:
    published = 0
    for name, service in _services().items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} must set host_ip 127.0.0.1"
            else:
                assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+(/tcp|/udp)?", str(port)), (
                    f"{name}: {port!r} must be written 127.0.0.1:host:container"
                )
    assert published >= 8, "the services, Kafka, Postgres, Mailpit, Prometheus and Grafana are reachable"


def test_every_dependency_is_waited_for_until_healthy_or_done() -> None:
    services = _services()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: the list form of depends_on waits for nothing"
        for target, rule in depends_on.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = rule.get("condition")
            assert condition in HEALTH_GATES, f"{name} -> {target}: condition {condition!r} is not a gate"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} needs a healthcheck for {name} to wait"
            else:
                assert services[target].get("restart") == "no", f"{target} is one-shot: restart: 'no'"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_waits_for_provisioning_kafka_and_postgres(name: str) -> None:
    depends_on = _services()[name]["depends_on"]
    assert depends_on["provision"]["condition"] == "service_completed_successfully"
    assert depends_on["kafka"]["condition"] == "service_healthy"
    assert depends_on["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("name", "port"), sorted(SERVICES.items()))
def test_service_runs_its_module_and_reports_readiness(name: str, port: int) -> None:
    service = _services()[name]
    assert service["command"] == ["python", "-m", name]
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert _environment(service)["CLAMEUR_HOST"] == "0.0.0.0"  # noqa: S104 - inside its container
    probe = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe, f"{name}'s healthcheck asks its own /readyz"
    grace = _seconds(str(service.get("stop_grace_period", "10s")))
    assert grace > DRAIN_SECONDS, f"{name} drains for {DRAIN_SECONDS} s; compose must not kill it sooner"


def test_provision_creates_topics_and_schemas_once_engines_are_healthy() -> None:
    provision = _services()["provision"]
    assert provision["command"] == ["python", "-m", "clameur.provision", "all"]
    assert provision["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert provision["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_kafka_is_a_single_kraft_node_that_the_services_can_reach() -> None:
    kafka = _services()["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    environment = _environment(kafka)
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(environment["KAFKA_NODE_ID"] + "@")
    advertised = {entry.split("://", 1)[1] for entry in environment["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in CLAMEUR_CONTAINERS:
        bootstrap = _environment(_services()[name])["CLAMEUR_KAFKA"]
        assert bootstrap in advertised, f"{name} bootstraps from {bootstrap}, which Kafka does not advertise"


# ------------------------------------------------------------------------ the image


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negated, re.compile(regex)))
    return patterns


def _left_out_of_build_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    left_out = False
    for negated, pattern in _dockerignore_patterns():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            left_out = not negated
    return left_out


def _instructions(keyword: str) -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    prefix = keyword + " "
    return [line[len(prefix) :].strip() for line in text.splitlines() if line.startswith(prefix)]


def _copied_sources() -> list[str]:
    sources: list[str] = []
    for arguments in _instructions("COPY"):
        if "--from=" in arguments:
            continue
        words = [word for word in arguments.split() if not word.startswith("--")]
        sources.extend(word.rstrip("/") for word in words[:-1])
    return sources


def test_image_is_python_311_slim_with_the_locked_dependencies() -> None:
    # The widget is built in a Node stage; what runs is the last stage, Python's.
    assert _instructions("FROM") == ["node:20-slim AS widget", "python:3.11-slim"]
    runs = " ".join(_instructions("RUN"))
    assert "uv sync --frozen --no-dev" in runs
    assert {"pyproject.toml", "uv.lock"} <= set(_copied_sources())


def test_image_carries_the_built_widget_where_intake_looks_for_it() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "RUN npm ci" in dockerfile and "RUN npm run build" in dockerfile
    assert "COPY --from=widget /widget/dist/widget.js widget/dist/widget.js" in dockerfile
    settings = (ROOT / "services" / "intake" / "settings.py").read_text()
    assert '"widget" / "dist" / "widget.js"' in settings


def test_image_runs_as_a_numeric_non_root_user() -> None:
    users = _instructions("USER")
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes check runAsNonRoot"


def test_image_copies_every_packaged_directory_and_the_migrations() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    sources = _copied_sources()
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not _left_out_of_build_context(source), f".dockerignore leaves out {source}"

    def copied(path: str) -> bool:
        return any(path == source or path.startswith(source + "/") for source in sources)

    for package in packages:
        assert copied(package), f"{package} is packaged but not copied into the image"
    migrations = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "services").glob("*/migrations/env.py"))
    assert migrations, "tally and notify keep their Alembic migrations under services/<svc>/migrations"
    for env_py in migrations:
        assert copied(env_py) and not _left_out_of_build_context(env_py)


@pytest.mark.parametrize(
    ("path", "left_out"),
    [
        ("pyproject.toml", False),
        ("uv.lock", False),
        ("clameur/settings.py", False),
        ("services/tally/migrations/env.py", False),
        ("devstack/stack.py", False),
        (".venv/bin/python", True),
        (".cache/dev/postgres/PG_VERSION", True),
        (".git/HEAD", True),
        ("tests/conftest.py", True),
        ("clameur/__pycache__/settings.cpython-311.pyc", True),
    ],
)
def test_build_context_holds_the_project_and_nothing_local(path: str, left_out: bool) -> None:
    assert _left_out_of_build_context(path) is left_out
