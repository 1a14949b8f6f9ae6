"""Generate the Python gRPC stubs into ``clients/gen/`` (run by ``make proto``).

Two sources:
- ``protos/`` of this repository: the board's API (package ``board.v1``), with its Connect service for the
  board's HTTP listener (``board_connect.py``, from PyPI's protoc-gen-connectrpc bound to these
  google.protobuf messages), and the Open Inference Protocol v2 (package ``inference``,
  ``protos/inference/grpc_predict_v2.proto``) that the board speaks to an OIP server;
- TorchServe's own ``inference.proto`` and ``management.proto``, extracted from the model-server jar of the
  installed ``torchserve`` package, so that the stubs always match the server that is installed.

protoc writes absolute imports (``from board.v1 import board_pb2``, ``import inference_pb2``) that assume the
output folder is on ``sys.path``; we rewrite them to ``clients.gen...`` so that the stubs are an ordinary
subpackage and nothing has to patch ``sys.path``.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

logger = logging.getLogger("clients.build_protos")

ROOT = Path(__file__).resolve().parent.parent
TORCHSERVE_PROTOS = ("inference.proto", "management.proto")


def torchserve_jar() -> Path:
    """Return the path of the installed TorchServe model-server jar; raise FileNotFoundError if absent."""
    try:
        frontend = resources.files("ts") / "frontend" / "model-server.jar"
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("torchserve is not installed; install the 'serve' extra") from exc
    path = Path(str(frontend))
    if not path.is_file():
        raise FileNotFoundError(f"TorchServe jar not found at {path}")
    return path


def extract_torchserve_protos(dest: Path) -> list[Path]:
    """Copy TorchServe's gRPC protos out of its jar into ``dest``; return the extracted files."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(torchserve_jar()) as jar:
        names = set(jar.namelist())
        for name in TORCHSERVE_PROTOS:
            member = f"proto/{name}" if f"proto/{name}" in names else name
            target = dest / name
            target.write_bytes(jar.read(member))
            out.append(target)
    return out


def _include_dirs() -> list[str]:
    import grpc_tools

    dirs = [str(Path(grpc_tools.__file__).parent / "_proto")]
    # googleapis-common-protos ships google/rpc/*.proto next to its modules (TorchServe imports status.proto).
    import google.rpc  # type: ignore[import-untyped]

    for entry in google.rpc.__path__:
        dirs.append(str(Path(entry).parent.parent))
    return dirs


def connect_plugin() -> Path:
    """protoc-gen-connectrpc of this environment; raise FileNotFoundError if absent."""
    plugin = Path(sys.executable).parent / "protoc-gen-connectrpc"
    if not plugin.is_file():
        raise FileNotFoundError(f"{plugin} not found; install the 'dev' extra")
    return plugin


def run_protoc(include_root: Path, files: list[Path], out: Path, *, connect: bool = False) -> None:
    """Run grpc_tools' protoc on ``files`` (relative to ``include_root``), with the Connect service stubs
    when ``connect``; raise RuntimeError on failure."""
    from grpc_tools import protoc

    plugins = (
        [f"--plugin=protoc-gen-connectrpc={connect_plugin()}", f"--connectrpc_out=protobuf=google:{out}"]
        if connect
        else []
    )
    args = [
        "grpc_tools.protoc",
        f"-I{include_root}",
        *(f"-I{d}" for d in _include_dirs()),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *plugins,
        *(str(f.relative_to(include_root)) for f in files),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {[str(f) for f in files]}")


# protoc's absolute imports of the packages under protos/, and where they live in clients/gen.
_REPOSITORY_PACKAGES = {"board.v1": "clients.gen.board.v1", "inference": "clients.gen.inference"}


def rewrite_imports(package_dir: Path, package: str, local_modules: set[str]) -> None:
    """Make protoc's absolute imports of sibling modules point into ``package``."""
    for path in package_dir.rglob("*.py*"):
        text = path.read_text()
        new = text
        for proto_package, module in _REPOSITORY_PACKAGES.items():
            new = re.sub(
                rf"^from {re.escape(proto_package)} import", f"from {module} import", new, flags=re.MULTILINE
            )
        for module in local_modules:
            new = re.sub(
                rf"^import {module} as", f"from {package} import {module} as", new, flags=re.MULTILINE
            )
        if new != text:
            path.write_text(new)


def build(out: Path, with_torchserve: bool) -> None:
    """Regenerate every stub under ``out`` from scratch."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "__init__.py").write_text('"""Generated by `make proto`; do not edit."""\n')

    protos = ROOT / "protos"
    board_files = sorted(protos.rglob("*.proto"))
    run_protoc(protos, board_files, out, connect=True)
    for generated in out.rglob("*_pb2.py"):
        package_dir = generated.parent
        while package_dir != out:
            (package_dir / "__init__.py").touch()
            package_dir = package_dir.parent
    for top in {f.relative_to(protos).parts[0] for f in board_files}:
        rewrite_imports(out / top, "clients.gen", set())
    logger.info("repository stubs: %s", ", ".join(p.name for p in board_files))

    if with_torchserve:
        ts_out = out / "torchserve"
        ts_out.mkdir()
        (ts_out / "__init__.py").touch()
        with tempfile.TemporaryDirectory() as tmp:
            files = extract_torchserve_protos(Path(tmp))
            run_protoc(Path(tmp), files, ts_out)
        rewrite_imports(ts_out, "clients.gen.torchserve", {f"{p[:-6]}_pb2" for p in TORCHSERVE_PROTOS})
        logger.info("torchserve stubs from %s", torchserve_jar())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "clients" / "gen")
    parser.add_argument(
        "--no-torchserve", action="store_true", help="only the board stubs (torchserve not installed)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        build(args.out, with_torchserve=not args.no_torchserve)
    except (FileNotFoundError, RuntimeError) as exc:
        logger.error("make proto: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
