"""deploy/k8s: every workload gets its settings, probes, limits and a safe shutdown.

The manifests are parsed as plain YAML; when kubectl is installed, kustomize also
builds them.  Nothing here needs a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from clameur.settings import ClameurSettings
from clameur.topics import Topics
from tests.support import ROOT

K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "clameur"
SERVICES = {"intake": 8001, "tally": 8002, "notify": 8003}
DRAIN_SECONDS = 30
SECRET_VARIABLES = {"CLAMEUR_DATABASE_URL", "CLAMEUR_SMTP_URL", "CLAMEUR_ADMIN_TOKEN", "CLAMEUR_SECRET"}
# The shared variables of the README's configuration table: every service reads these,
# the four secrets and two that are not.
DESIGN_VARIABLES = SECRET_VARIABLES | {"CLAMEUR_KAFKA", "CLAMEUR_PUBLIC_URL"}
PROVISION_JOBS = {
    "clameur-topics": ["python", "-m", "clameur.provision", "topics"],
    "clameur-migrate": ["python", "-m", "clameur.provision", "migrate"],
}


def _kustomization() -> dict[str, Any]:
    loaded = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for resource in _kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{resource} holds a non-object document"
                objects.append(document)
    return objects


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name}, found {len(found)}"
    return found[0]


def _workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template: the Deployments' and the Jobs'."""
    for obj in _objects():
        if obj["kind"] in ("Deployment", "Job"):
            yield f"{obj['kind']} {obj['metadata']['name']}", obj["spec"]["template"]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, resolving a named port to the container's number."""
    if isinstance(port, int):
        return port
    numbers = [int(p["containerPort"]) for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"no container port is named {port!r}"
    return numbers[0]


def _keys(kind: str, name: str) -> set[str]:
    obj = _one(kind, name)
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def _selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "kustomization.yaml must list exactly the manifests in deploy/k8s"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed to run kustomize")
def test_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc]
    assert kinds.count("Deployment") == 3 and kinds.count("Job") == 2


def test_everything_lives_in_the_clameur_namespace() -> None:
    assert _kustomization()["namespace"] == NAMESPACE
    _one("Namespace", NAMESPACE)
    for obj in _objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}"


def test_configmap_runs_production_with_an_https_public_url() -> None:
    data = _one("ConfigMap", "clameur-config")["data"]
    assert data["CLAMEUR_ENV"] == "production"
    assert data["CLAMEUR_KAFKA"]
    assert data["CLAMEUR_PUBLIC_URL"].startswith("https://"), "notify refuses http links in production"
    assert not SECRET_VARIABLES & set(data), "secrets belong in the Secret, not the ConfigMap"


def test_secret_in_the_repository_holds_only_placeholders() -> None:
    secret = _one("Secret", "clameur-secrets")
    values = secret.get("stringData") or {}
    assert set(values) == SECRET_VARIABLES
    for key, value in values.items():
        assert "REPLACE-ME" in value, f"{key} must be a placeholder: real secrets never go in git"
    assert "must be replaced" in (K8S / "secret.yaml").read_text()


def test_the_secret_shows_the_tls_production_requires() -> None:
    values = _one("Secret", "clameur-secrets")["stringData"]
    assert values["CLAMEUR_DATABASE_URL"].endswith("?sslmode=verify-full")
    assert values["CLAMEUR_SMTP_URL"].startswith("smtps://")


@pytest.mark.parametrize("name", SERVICES)
def test_the_committed_placeholders_stop_every_service(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Applied as committed, the pods refuse to start rather than run on REPLACE-ME.
    environment = {
        **_one("ConfigMap", "clameur-config")["data"],
        **_one("Secret", "clameur-secrets")["stringData"],
    }
    for variable in _container(_one("Deployment", name)).get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:  # the service's own Kafka password, from its Secret
            ref = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = _one("Secret", ref["name"])["stringData"][ref["key"]]
    for variable, value in environment.items():
        monkeypatch.setenv(variable, str(value))
    with pytest.raises(ValidationError, match=r"CLAMEUR_(SECRET|ADMIN_TOKEN|DATABASE_URL)"):
        ClameurSettings()


def test_every_workload_gets_every_design_variable() -> None:
    workloads = list(_workloads())
    assert len(workloads) == 5, "three Deployments and two provisioning Jobs"
    for what, template in workloads:
        for container in template["spec"]["containers"]:
            provided = {entry["name"] for entry in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    provided |= _keys("ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    provided |= _keys("Secret", source["secretRef"]["name"])
            missing = DESIGN_VARIABLES - provided
            assert not missing, f"{what} does not get {sorted(missing)}"


@pytest.mark.parametrize(("name", "port"), sorted(SERVICES.items()))
def test_deployment_runs_the_service_safely(name: str, port: int) -> None:
    deployment = _one("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["image"] == f"clameur/{name}:latest"
    assert container["command"] == ["python", "-m", name]
    assert [int(p["containerPort"]) for p in container["ports"]] == [port]
    env = {entry["name"]: entry.get("value") for entry in container.get("env", [])}
    assert env["CLAMEUR_HOST"] == "0.0.0.0"  # noqa: S104 - the pod's network, not the host's
    assert pod["terminationGracePeriodSeconds"] > DRAIN_SECONDS
    for flavour in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][flavour]), f"{name} needs cpu/memory {flavour}"
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True or security.get("runAsNonRoot") is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(("name", "port"), sorted(SERVICES.items()))
def test_probes_ask_healthz_for_liveness_and_readyz_for_readiness(name: str, port: int) -> None:
    container = _container(_one("Deployment", name))
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{name} {probe}"
        assert _container_port(container, get["port"]) == port, f"{name} {probe} port"


@pytest.mark.parametrize(("name", "port"), sorted(SERVICES.items()))
def test_service_routes_to_the_pods(name: str, port: int) -> None:
    deployment = _one("Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one("Service", name)
    assert service["spec"]["selector"] and _selected(service["spec"]["selector"], pod_labels)
    [service_port] = service["spec"]["ports"]
    assert service_port["port"] == port
    assert _container_port(_container(deployment), service_port["targetPort"]) == port


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_disruption_budget_covers_the_pods_and_lets_drains_proceed(name: str) -> None:
    deployment = _one("Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = _one("PodDisruptionBudget", name)["spec"]
    assert _selected(budget["selector"]["matchLabels"], pod_labels)
    assert budget["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    if "maxUnavailable" in budget:
        assert budget["maxUnavailable"] >= 1, "a budget of 0 blocks every node drain"
    else:
        assert budget["minAvailable"] < deployment["spec"].get("replicas", 2)


def test_intake_scales_out_on_cpu() -> None:
    autoscaler = _one("HorizontalPodAutoscaler", "intake")["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "intake"}
    cpu = [m for m in autoscaler["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu, "intake scales on CPU"
    assert 2 <= autoscaler["minReplicas"] < autoscaler["maxReplicas"]
    assert "replicas" not in _one("Deployment", "intake")["spec"], "the autoscaler owns intake's count"


@pytest.mark.parametrize("name", ["tally", "notify"])
def test_consumers_do_not_outnumber_signature_partitions(name: str) -> None:
    partitions = {spec.name: spec.partitions for spec in Topics().specs()}[Topics().signatures]
    replicas = _one("Deployment", name)["spec"]["replicas"]
    assert 1 <= replicas <= partitions, f"{name}: members beyond {partitions} partitions sit idle"


@pytest.mark.parametrize(("name", "command"), sorted(PROVISION_JOBS.items()))
def test_provisioning_job_runs_its_command_as_a_one_shot(name: str, command: list[str]) -> None:
    job = _one("Job", name)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == command
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert container["image"] in {f"clameur/{service}:latest" for service in SERVICES}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_provisioning_commands_exist() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "clameur.provision", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert shown.returncode == 0, shown.stderr
    for command in PROVISION_JOBS.values():
        assert command[-1] in shown.stdout, f"clameur.provision does not offer {command[-1]!r}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_deployment_logs_in_to_kafka_as_its_own_user(name: str) -> None:
    config = _one("ConfigMap", "clameur-config")["data"]
    assert config["CLAMEUR_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", "production refuses PLAINTEXT"
    env = {entry["name"]: entry for entry in _container(_one("Deployment", name)).get("env", [])}
    assert env["CLAMEUR_KAFKA_USERNAME"]["value"] == name
    reference = env["CLAMEUR_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (reference["name"], reference["key"]) == ("clameur-kafka-users", name), "its own password only"
    users = _one("Secret", "clameur-kafka-users")["stringData"]
    assert set(users) == {"admin", *SERVICES} and all(v == "REPLACE-ME" for v in users.values())
