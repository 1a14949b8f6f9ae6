"""The contract only grows: `buf breaking` of protos/ against the released copy (protos-released/), the check
`make lint` runs, passes, and it does fail when a field of the contract is renumbered or removed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration  # buf runs as a subprocess

BUF = REPO_ROOT / "clients" / "node" / "node_modules" / ".bin" / "buf"
PROTOS, RELEASED = REPO_ROOT / "protos", REPO_ROOT / "protos-released"


def breaking(module: Path) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail("buf missing: run `make node` (make test does)")
    return subprocess.run(
        [str(BUF), "breaking", ".", "--against", str(RELEASED)],
        cwd=module, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_contract_only_adds_to_the_released_one() -> None:
    done = breaking(PROTOS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_renumbered_field_breaks_the_contract(tmp_path: Path) -> None:
    module = tmp_path / "protos"
    shutil.copytree(PROTOS, module)
    proto = module / "board" / "v1" / "board.proto"
    text = proto.read_text()
    assert "  string title = 2;\n" in text
    proto.write_text(text.replace("  string title = 2;\n", "  string title = 9;\n", 1))
    done = breaking(module)
    assert done.returncode != 0
    assert 'Previously present field "2" with name "title"' in done.stdout
