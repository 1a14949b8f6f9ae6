"""board_server's layers (docs/architecture.md): a module imports only from its own layer or the ones below,
the transports alone speak gRPC and proto, and no transport touches SQL. Read from the source with ast, so
the test starts nothing."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

PACKAGE = REPO_ROOT / "board_server"
# Bottom to top; board_server/__main__.py stands on all of them.
LAYERS = ("core", "storage", "query", "tagging", "domain", "api", "runtime", "__main__")
# Third-party or sibling packages a layer must not import, and why.
FORBIDDEN = {
    "core": {"sqlalchemy": "core is the vocabulary every layer shares", "grpc": "core has no transport"},
    "storage": {"grpc": "storage knows no transport", "clients.gen.board": "storage knows no proto"},
    "query": {"grpc": "the filter language knows no transport", "clients.gen.board": "nor the proto"},
    "domain": {"grpc": "use cases serve every transport alike", "clients.gen.board": "nor the proto"},
    "api": {"sqlalchemy": "transports call use cases, never SQL"},
}


def layer_of(path: Path) -> str | None:
    """The layer of a module under board_server/ (None for the package's own __init__)."""
    parts = path.relative_to(PACKAGE).parts
    if parts == ("__main__.py",):
        return "__main__"
    return parts[0] if len(parts) > 1 else None


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in ``source``, ``from a import b`` giving ``a.b`` too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def violations(sources: Mapping[Path, str]) -> list[str]:
    """Every import of ``sources`` (paths under board_server/) that breaks the layering."""
    found: list[str] = []
    for path, source in sources.items():
        layer = layer_of(path)
        if layer is None:
            continue
        rank = LAYERS.index(layer)
        name = path.relative_to(REPO_ROOT)
        for line, module in imported_modules(source):
            parts = module.split(".")
            above = parts[0] == "board_server" and len(parts) > 1 and parts[1] in LAYERS[rank + 1 :]
            if above:
                found.append(f"{name}:{line} imports {module}: {parts[1]} stands above {layer}")
            for banned, why in FORBIDDEN.get(layer, {}).items():
                if module == banned or module.startswith(banned + "."):
                    found.append(f"{name}:{line} imports {module}: {why}")
    return sorted(set(found))


def package_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_a_layer() -> None:
    strays = [
        str(path.relative_to(REPO_ROOT))
        for path in PACKAGE.rglob("*.py")
        if layer_of(path) not in (*LAYERS, None)
    ]
    assert strays == []


def test_imports_only_point_down() -> None:
    assert violations(package_sources()) == []


@pytest.mark.parametrize(
    ("path", "source", "complaint"),
    [
        ("storage/rows.py", "from board_server.domain.accounts import Caller", "domain stands above storage"),
        ("domain/x.py", "import board_server.api.server", "api stands above domain"),
        ("core/x.py", "from board_server import runtime\nimport board_server.runtime.config", "above core"),
        ("api/x.py", "from sqlalchemy import select", "never SQL"),
        ("domain/x.py", "import grpc", "every transport alike"),
        ("query/x.py", "from clients.gen.board.v1 import board_pb2", "nor the proto"),
    ],
)
def test_an_import_from_above_is_caught(path: str, source: str, complaint: str) -> None:
    found = violations({PACKAGE / path: source})
    assert found and all(complaint in line for line in found), found


def test_imports_from_below_and_beside_pass() -> None:
    sources = {
        PACKAGE / "domain/x.py": "from board_server.storage import engine\nfrom board_server.domain import y",
        PACKAGE / "api/x.py": "import grpc\nfrom board_server.domain.board import Board",
        PACKAGE / "__main__.py": "from board_server.runtime.config import Settings",
    }
    assert violations(sources) == []
