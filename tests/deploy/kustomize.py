"""The part of kustomize that deploy/ uses, in Python, so that the manifests are rendered and checked where no
kustomize binary is installed.

It understands ``resources`` (files, and directories with a kustomization of their own), ``namespace``,
``images`` and ``secretGenerator`` (``envs``, ``files``, ``literals``), including the hash suffix of a
generated Secret and the rewriting of the references to it, as kustomize v5 does. Any other field of a
kustomization is refused, so that deploy/ cannot start using a feature this renderer would silently skip;
tests/deploy/test_manifests.py compares its output with ``kubectl kustomize`` wherever kubectl is installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "secretGenerator"}
GENERATOR_FIELDS = {"name", "type", "envs", "files", "literals"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
}  # fmt: skip
BASE64_LINE = 70  # kustomize wraps a generated Secret's base64 values at this width
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render, or would render differently from kustomize."""


def render(directory: Path) -> list[Manifest]:
    """Every manifest ``kubectl kustomize directory`` prints, in this renderer's order (not kubectl's)."""
    kustomization = _load_kustomization(directory)
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            manifests += render(path)
        elif path.is_file():
            manifests += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} is neither a file nor a directory")
    generated = [_generate_secret(directory, spec) for spec in kustomization.get("secretGenerator", [])]
    manifests += generated
    if "namespace" in kustomization:
        _set_namespace(manifests, kustomization["namespace"])
    for image in kustomization.get("images", []):
        _set_image(manifests, image)
    for secret in generated:
        _add_hash_suffix(manifests, secret)
    return manifests


def _load_kustomization(directory: Path) -> dict[str, Any]:
    found = [directory / name for name in KUSTOMIZATION_FILES if (directory / name).is_file()]
    if len(found) != 1:
        raise KustomizeError(f"{directory}: expected one kustomization file, found {len(found)}")
    kustomization: dict[str, Any] = yaml.safe_load(found[0].read_text()) or {}
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{found[0]}: this renderer does not understand {sorted(unknown)}")
    return kustomization


def _generate_secret(directory: Path, spec: dict[str, Any]) -> Manifest:
    unknown = set(spec) - GENERATOR_FIELDS
    if unknown:
        raise KustomizeError(f"secretGenerator {spec.get('name')!r}: unsupported {sorted(unknown)}")
    values: dict[str, str] = {}
    for env_file in spec.get("envs", []):
        values.update(read_env_file(directory / env_file))
    for source in spec.get("files", []):
        key, equals, file_name = source.partition("=")
        path = directory / (file_name if equals else key)
        values[key if equals else path.name] = path.read_text()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        values[key] = value
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec["name"]},
        "type": spec.get("type", "Opaque"),
        "data": {key: wrapped_base64(value) for key, value in values.items()},
    }


def read_env_file(path: Path) -> dict[str, str]:
    """``key=value`` lines as kustomize reads them: leading blanks dropped, blank and ``#`` lines skipped, the
    value verbatim after the first ``=``. Raises KustomizeError on a line without ``=`` (kustomize would take
    the value from the environment of whoever renders)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().removeprefix("\ufeff").splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        if not equals or not _ENV_NAME.match(key):
            raise KustomizeError(f"{path}:{number}: expected key=value")
        values[key] = value
    return values


def wrapped_base64(value: str) -> str:
    """Base64 of ``value`` as kustomize writes it: one line, or lines of 70 characters each ending in ``\\n``
    when it is longer (Kubernetes ignores the line breaks when it decodes)."""
    encoded = base64.b64encode(value.encode()).decode()
    if len(encoded) < BASE64_LINE:
        return encoded
    return "".join(encoded[i : i + BASE64_LINE] + "\n" for i in range(0, len(encoded), BASE64_LINE))


def secret_hash(secret: Manifest) -> str:
    """The suffix kustomize appends to a generated Secret's name: ten characters of a SHA-256 over its type
    and data. kustomize also means to hash the name, but looks it up with a path that never matches, so the
    name counts as "" (checked against kubectl kustomize v5.5.0)."""
    payload = {"data": secret.get("data", {}), "kind": "Secret", "name": "", "type": secret.get("type", "")}
    encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # Go's json.Marshal escapes these three for HTML.
    encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))  # as kustomize's encode()


def _set_namespace(manifests: list[Manifest], namespace: str) -> None:
    for manifest in manifests:
        if manifest["kind"] == "Namespace":
            manifest["metadata"]["name"] = namespace  # kustomize renames Namespace objects too
        elif manifest["kind"] not in CLUSTER_SCOPED:
            manifest["metadata"]["namespace"] = namespace


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    """The pod template's spec of a workload, None for other kinds."""
    kind = manifest["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
        return spec
    if kind == "CronJob":
        spec = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Init containers, then containers, of a pod spec."""
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def image_name(image: str) -> str:
    """``registry/name:tag@digest`` without its tag and digest."""
    name = image.split("@", 1)[0]
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name


def _set_image(manifests: list[Manifest], rule: dict[str, str]) -> None:
    for manifest in manifests:
        spec = pod_spec(manifest)
        for container in containers(spec) if spec else ():
            current = container["image"]
            if image_name(current) != rule["name"]:
                continue
            name = rule.get("newName", image_name(current))
            if "digest" in rule:
                container["image"] = f"{name}@{rule['digest']}"
            elif "newTag" in rule:
                container["image"] = f"{name}:{rule['newTag']}"
            else:
                container["image"] = name + current[len(image_name(current)) :]


def _add_hash_suffix(manifests: list[Manifest], secret: Manifest) -> None:
    old = secret["metadata"]["name"]
    new = f"{old}-{secret_hash(secret)}"
    secret["metadata"]["name"] = new
    namespace = secret["metadata"].get("namespace")
    for manifest in manifests:
        spec = pod_spec(manifest)
        if spec is None or manifest["metadata"].get("namespace") != namespace:
            continue
        for reference in _secret_references(spec):
            if reference.get(_name_key(reference)) == old:
                reference[_name_key(reference)] = new


def _name_key(reference: dict[str, Any]) -> str:
    return "secretName" if "secretName" in reference else "name"


def _secret_references(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every place in a pod spec that names a Secret."""
    for container in containers(spec):
        for env in container.get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                yield env["valueFrom"]["secretKeyRef"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            yield volume["secret"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                yield source["secret"]
    yield from spec.get("imagePullSecrets", [])
