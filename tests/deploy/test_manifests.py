"""deploy/: the kustomization renders (tests/deploy/kustomize.py, compared with ``kubectl kustomize`` where
kubectl is installed), every rendered manifest is valid for the oldest and newest Kubernetes we claim, and the
pieces fit each other and the code: probes on the board's real port and service, settings the board knows,
selectors that select, the HPA on the board, only the board let through to TorchServe's inference port.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from board_server.api.server import LIVENESS, SERVICE_NAME
from board_server.runtime.config import OPTIONS, Settings, load_settings
from seg_handler.launcher.torchserve import read_properties
from tests.deploy.kustomize import Manifest, containers, pod_spec, render
from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "production"
SECRET_EXAMPLE = OVERLAY / "secrets" / "database.env.example"
# The Kubernetes versions the manifests are written for: the oldest (native grpc probes, the preStop sleep
# action) and the newest that kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The production overlay rendered from a copy of deploy/ whose secret file is the committed example, as
    an operator's copy would be."""
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy)
    shutil.copy(SECRET_EXAMPLE, copy / "overlays" / "production" / "secrets" / "database.env")
    return render(copy / "overlays" / "production")


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def container(manifests: list[Manifest], deployment: str) -> dict[str, Any]:
    spec = pod_spec(find(manifests, "Deployment", deployment))
    assert spec is not None
    (only,) = spec["containers"]
    return dict(only)


def deployments(manifests: list[Manifest]) -> Iterator[Manifest]:
    return (m for m in manifests if m["kind"] == "Deployment")


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``512Mi``) as a number of cores or bytes."""
    value = str(text)
    suffix = value.lstrip("0123456789.")
    return float(value[: len(value) - len(suffix)]) * UNITS[suffix]


def canonical(manifest: Manifest) -> str:
    return json.dumps(manifest, sort_keys=True)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def board_environment(manifests: list[Manifest]) -> dict[str, str]:
    """The board container's environment with Secret references resolved from the rendered Secrets."""
    env: dict[str, str] = {}
    for variable in container(manifests, "board")["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        reference = variable["valueFrom"]["secretKeyRef"]
        secret = find(manifests, "Secret", reference["name"])
        env[variable["name"]] = base64.b64decode(secret["data"][reference["key"]]).decode()
    return env


def board_settings(manifests: list[Manifest]) -> Settings:
    """What the board makes of that environment in its image's working directory (raises like the board)."""
    return load_settings(None, env=board_environment(manifests), cwd=Path("/var/lib/board"))


def torchserve_properties() -> dict[str, str]:
    """The TorchServe image's config.properties: the repository's, then deploy's (a later key wins)."""
    template = (REPO_ROOT / "seg_handler" / "config.properties").read_text()
    overrides = (DEPLOY / "images" / "torchserve" / "cluster.properties").read_text()
    return read_properties(template + "\n" + overrides)


def named_port(workload: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in workload["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_is_valid_for_kubernetes(overlay: list[Manifest], version: str) -> None:
    assert {m["kind"] for m in overlay} >= {
        "Namespace", "ServiceAccount", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    for manifest in overlay:  # the base's resources, with the images and the Secret an installation adds
        # strict: an unknown field (a misspelt probe, say) is an error, not something the API server drops.
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.integration  # runs kubectl kustomize
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize built in) not installed")
def test_renderer_prints_what_kubectl_kustomize_prints(overlay: list[Manifest], tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    shutil.copy(SECRET_EXAMPLE, copy / "overlays" / "production" / "secrets" / "database.env")
    for directory, ours in ((copy / "base", render(BASE)), (copy / "overlays" / "production", overlay)):
        printed = subprocess.run(
            ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        theirs = [m for m in yaml.safe_load_all(printed) if m]
        assert sorted(map(canonical, theirs)) == sorted(map(canonical, ours))


def test_board_probes_are_grpc_health_on_the_port_it_listens_on(overlay: list[Manifest]) -> None:
    board = container(overlay, "board")
    port = port_of(board_settings(overlay).address)
    assert named_port(board, "grpc") == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert board[probe]["grpc"]["port"] == port, probe
    # Readiness asks for the board's own service, by the name the server registers.
    assert board["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    # Liveness asks the name that stays SERVING through a database outage: an outage makes pods unready only.
    assert board["livenessProbe"]["grpc"]["service"] == LIVENESS


def test_board_environment_is_settings_the_board_accepts(overlay: list[Manifest]) -> None:
    known = {option.env for option in OPTIONS}
    names = [variable["name"] for variable in container(overlay, "board")["env"]]
    assert sorted(set(names) - known) == [], "environment variables the board does not read"
    assert len(names) == len(set(names))
    settings = board_settings(overlay)
    assert settings.processes == 1
    assert urlsplit(settings.database_url).scheme == "postgresql+psycopg"
    assert settings.segmentation_token_files == ()  # token authorization is off in the cluster
    board = container(overlay, "board")
    assert named_port(board, "metrics") == port_of(settings.metrics_address)
    # Drained before the kubelet kills it: the preStop pause plus the board's own grace.
    spec = pod_spec(find(overlay, "Deployment", "board"))
    assert spec is not None
    pause = board["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + settings.grace_seconds


def test_board_writes_only_to_empty_dirs(overlay: list[Manifest]) -> None:
    spec = pod_spec(find(overlay, "Deployment", "board"))
    assert spec is not None
    mounts = {m["mountPath"]: m["name"] for m in container(overlay, "board")["volumeMounts"]}
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    audit_dir = str(board_settings(overlay).audit_log_path.parent)
    assert mounts.get(audit_dir) in empty_dirs, f"the audit log's directory {audit_dir} is not an emptyDir"
    assert mounts.get("/tmp") in empty_dirs


@pytest.mark.parametrize("name", ["board", "torchserve"])
def test_pods_run_unprivileged_with_a_read_only_root(overlay: list[Manifest], name: str) -> None:
    deployment = find(overlay, "Deployment", name)
    spec = pod_spec(deployment)
    assert spec is not None
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0 and pod["runAsGroup"] > 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    account = find(overlay, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    for each in containers(spec):
        security = each["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        resources = each["resources"]
        for resource in ("cpu", "memory"):
            assert quantity(resources["requests"][resource]) <= quantity(resources["limits"][resource])
        assert ":" in each["image"] and not each["image"].endswith(":latest")
    namespace = find(overlay, "Namespace", deployment["metadata"]["namespace"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_services_and_budgets_select_their_deployments_pods(overlay: list[Manifest]) -> None:
    selecting = [m for m in overlay if m["kind"] in ("Service", "PodDisruptionBudget")]
    assert len(selecting) == 4
    for manifest in selecting:
        selector = manifest["spec"]["selector"]
        if manifest["kind"] == "PodDisruptionBudget":
            selector = selector["matchLabels"]
        selected = [
            d
            for d in deployments(overlay)
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"{manifest['kind']} {manifest['metadata']['name']} selects {selected}"
        deployment = selected[0]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= selector.items()
        if manifest["kind"] == "Service":
            workload = container(overlay, deployment["metadata"]["name"])
            for port in manifest["spec"]["ports"]:
                named_port(workload, port["targetPort"])  # every Service port lands on a named container port


def test_hpa_scales_the_board_on_cpu(overlay: list[Manifest]) -> None:
    hpa = find(overlay, "HorizontalPodAutoscaler", "board")
    deployment = find(overlay, "Deployment", "board")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert quantity(container(overlay, "board")["resources"]["requests"]["cpu"]) > 0  # utilization's base


def test_board_resolves_every_torchserve_pod_through_the_headless_service(overlay: list[Manifest]) -> None:
    target = board_settings(overlay).segmentation_target
    assert target.startswith("dns:///")
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    service_name, namespace, *domain = host.split(".")
    assert domain == ["svc", "cluster", "local"]
    service = find(overlay, "Service", service_name)
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["namespace"] == namespace
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    torchserve = container(overlay, "torchserve")
    properties = torchserve_properties()
    assert named_port(torchserve, service_port["targetPort"]) == int(properties["grpc_inference_port"])
    assert properties["grpc_inference_address"] == "0.0.0.0"


def test_torchserve_probes_ports_and_threads_match_its_configuration(overlay: list[Manifest]) -> None:
    torchserve = container(overlay, "torchserve")
    properties = torchserve_properties()
    assert named_port(torchserve, "http") == port_of(properties["inference_address"])
    assert named_port(torchserve, "metrics") == port_of(properties["metrics_address"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert torchserve[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    # Management never leaves the pod: nothing outside may scale or reload models.
    assert urlsplit(properties["management_address"]).hostname == "127.0.0.1"
    assert properties["grpc_management_address"] == "127.0.0.1"
    # torch's threads are the container's cores, not the node's.
    env = {variable["name"]: variable["value"] for variable in torchserve["env"]}
    assert quantity(env["OMP_NUM_THREADS"]) == quantity(torchserve["resources"]["limits"]["cpu"])


def test_only_the_board_reaches_torchserve_inference(overlay: list[Manifest]) -> None:
    """Token authorization is off in the cluster, so the NetworkPolicy is TorchServe's access control."""
    torchserve = container(overlay, "torchserve")
    assert "--disable-token-auth" in torchserve["args"]
    policy = find(overlay, "NetworkPolicy", "torchserve")
    pods = find(overlay, "Deployment", "torchserve")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pods.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    board_pods = find(overlay, "Deployment", "board")["spec"]["template"]["metadata"]["labels"]
    inference = named_port(torchserve, "grpc-inference")
    allowed: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        for port in rule["ports"]:
            allowed.setdefault(port["port"], []).extend(rule["from"])
    assert set(allowed) == {inference, named_port(torchserve, "metrics")}
    for source in allowed[inference]:
        assert set(source) == {"podSelector"}, "only pods of this namespace"
        assert source["podSelector"]["matchLabels"].items() <= board_pods.items()


@pytest.mark.integration  # runs git check-ignore
def test_database_url_comes_from_a_generated_secret_fed_by_an_ignored_file(overlay: list[Manifest]) -> None:
    env = container(overlay, "board")["env"]
    (reference,) = [v["valueFrom"]["secretKeyRef"] for v in env if v["name"] == "BOARD_DATABASE_URL"]
    secret = find(overlay, "Secret", reference["name"])
    assert reference["name"].startswith("board-database-"), "the hash suffix rolls the pods on a new URL"
    assert secret["metadata"]["namespace"] == find(overlay, "Deployment", "board")["metadata"]["namespace"]
    url = board_environment(overlay)["BOARD_DATABASE_URL"]
    assert url == url.strip() and "EXAMPLE-NOT-A-PASSWORD" in url
    real_file = OVERLAY / "secrets" / "database.env"
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", str(real_file)], cwd=REPO_ROOT, check=False
    )
    assert ignored.returncode == 0, f"{real_file} must be ignored by git"
    tracked = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", str(SECRET_EXAMPLE)], cwd=REPO_ROOT, check=False
    )
    assert tracked.returncode == 1, f"{SECRET_EXAMPLE} must not be ignored"
