"""The README's five-minute tour, run as written against real servers started the way `make run` starts them.

The tour's commands are the fenced ```sh blocks between ``<!-- tour:start -->`` and ``<!-- tour:end -->``; a
block after ``<!-- tour:only SERVING -->`` belongs to that model server alone. They run in order, in one
bash, in a private working directory laid out like the repository (``.venv``, ``clients`` and ``protos``
linked, ``var/`` its own), against ``python -m seg_handler.launcher run`` (what `make run` runs) with a
small test archive, once with TorchServe and once with the OIP server (`make run SERVING=oip`). The only
differences from a person at a terminal: the servers listen on free ports, so the default addresses in the
commands are replaced with them (and ``BOARD_TARGET`` and ``SEG_*_PORT`` point the CLIs there), the password
arrives on stdin, and a generated picture stands in for ``photo.jpg``. Like a person, the tour starts when
`make run` says "Ctrl-C stops everything" (its promise that everything answers by then), and depends on
nothing else it prints.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from seg_handler import launcher
from tests.docs.markdown import fenced_blocks
from tests.support import REPO_ROOT, Processes, photo_jpeg, run_port
from tests.torchserve_fixtures import require_oip_environment

pytestmark = [
    pytest.mark.torchserve,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]

TOUR_START, TOUR_END = "<!-- tour:start -->", "<!-- tour:end -->"
ONLY = re.compile(r"<!-- tour:only (\w+) -->")
PASSWORD = "a tour password, 8+ characters"
PORT_NAMES = ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")
# Settings from the developer's shell must not reach these servers (a database URL, a token, traces, ...).
FOREIGN_ENV_PREFIXES = ("BOARD_", "SEG_", "OTEL_")
FOREIGN_ENV = ("XDG_CONFIG_HOME", "PROMETHEUS_MULTIPROC_DIR")


def tour_script(readme: str, serving: str = "torchserve") -> list[str]:
    """The tour's ```sh blocks for ``serving``, in order (those after another server's ``tour:only`` left
    out)."""
    start, end = readme.find(TOUR_START), readme.find(TOUR_END)
    assert 0 <= start < end, f"README.md has no {TOUR_START} … {TOUR_END} section"
    section, cursor, blocks = readme[start:end], 0, []
    for block in fenced_blocks(section, "sh"):
        at = section.find(block, cursor)
        only = ONLY.search(section, cursor, at)
        cursor = at + len(block)
        if only is None or only.group(1) == serving:
            blocks.append(block)
    assert blocks, "the tour has no ```sh blocks"
    return blocks


@dataclass(frozen=True)
class Addresses:
    """Where the servers of this test listen: the board, its metrics and TorchServe's five ports."""

    board: str
    board_metrics: str
    torchserve_ports: dict[str, int]
    oip_port: int = 0

    def environment(self) -> dict[str, str]:
        """What `make run`'s launcher and the CLIs read to find them."""
        env = {f"SEG_{name}_PORT": str(port) for name, port in self.torchserve_ports.items()}
        env["SEG_OIP_PORT"] = str(self.oip_port)
        return env | {"BOARD_ADDRESS": self.board, "BOARD_METRICS_ADDRESS": self.board_metrics}

    def replacements(self) -> dict[str, str]:
        """The default address of each server (what a person's `make run` uses) → this test's address."""
        default = launcher.ServeSettings(model_store=Path("."))
        ports = self.torchserve_ports
        return {
            default.board_address: self.board,
            default.board_metrics_address: self.board_metrics,
            f"{default.host}:{default.inference_port}": f"127.0.0.1:{ports['INFERENCE']}",
            f"{default.host}:{default.management_port}": f"127.0.0.1:{ports['MANAGEMENT']}",
            f"{default.host}:{default.metrics_port}": f"127.0.0.1:{ports['METRICS']}",
            f"{default.host}:{default.grpc_inference_port}": f"127.0.0.1:{ports['GRPC_INFERENCE']}",
            f"{default.host}:{default.grpc_management_port}": f"127.0.0.1:{ports['GRPC_MANAGEMENT']}",
            f"{default.host}:{default.oip_port}": f"127.0.0.1:{self.oip_port}",
        }


def at_these_addresses(command: str, addresses: Addresses) -> str:
    for default, actual in addresses.replacements().items():
        command = command.replace(default, actual)
    return command


@pytest.fixture(scope="module")
def model_store(e2e_model_store: Path) -> Path:
    """The run's test archive and .pt2, built by `python -m training.export` as `make model` does (random
    weights, input 64); `make run` and the servers it starts only read the store."""
    return e2e_model_store


def repository_like(folder: Path) -> Path:
    """A working directory laid out like the repository for the tour: the venv and clients, a private var/."""
    folder.mkdir()
    for name in (".venv", "clients", "protos"):
        (folder / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    (folder / "photo.jpg").write_bytes(photo_jpeg())
    return folder


def wait_until_announced(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    """Until `make run` says "Ctrl-C stops everything": the moment a person starts pasting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`launcher run` exited with {proc.returncode}:\n{_tail(log)}")
        if "Ctrl-C stops everything" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    pytest.fail(f"`make run` did not announce itself within {timeout:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _board_servers(address: str) -> list[int]:
    """Pids of board-server processes started for ``address`` (found in /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                args = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
                if any(a.endswith("board-server") for a in args[:2]) and address in args:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def make_run(work: Path, addresses: Addresses, processes: Processes) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m seg_handler.launcher run` in ``work``, stopped with SIGTERM (Ctrl-C's path) afterwards; the
    servers it started are stopped by pid even if it could not stop them itself."""
    proc = processes.start([sys.executable, "-m", "seg_handler.launcher", "run"], name="make-run", cwd=work)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=120)
        for pid in _board_servers(addresses.board):
            launcher.stop_process(pid)
        for pid_file in ("torchserve.pid", "oip-server.pid"):
            with contextlib.suppress(OSError, ValueError):
                launcher.stop_process(int((work / "var" / "torchserve" / pid_file).read_text()))


@pytest.mark.parametrize("serving", ["torchserve", "oip"])
def test_the_readme_tour_runs_as_written(
    serving: str, model_store: Path, tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (REPO_ROOT / "clients" / "node" / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules missing: run `make node` (make run and make test do)")
    if serving == "oip":
        require_oip_environment()
    blocks = tour_script((REPO_ROOT / "README.md").read_text(), serving)
    for name in list(os.environ):
        if name.startswith(FOREIGN_ENV_PREFIXES) or name in FOREIGN_ENV:
            monkeypatch.delenv(name)
    work = repository_like(tmp_path / "repository")
    addresses = Addresses(
        board=f"127.0.0.1:{run_port()}",
        board_metrics=f"127.0.0.1:{run_port()}",
        torchserve_ports={name: run_port() for name in PORT_NAMES},
        oip_port=run_port(),
    )
    for name, value in addresses.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SEG_MODEL_STORE", str(model_store))
    monkeypatch.setenv("SEG_RUNTIME_DIR", str(work / "var" / "torchserve"))
    monkeypatch.setenv("SEG_READY_TIMEOUT", "240")
    monkeypatch.setenv("BOARD_PROCESSES", "2")  # the supervisor's path, as on any multi-core machine
    monkeypatch.setenv("SEG_SERVING", serving)  # what `make run SERVING=...` passes as --serving

    steps = [
        f"echo '>>> tour step {i}' >&2\n{at_these_addresses(block, addresses)}"
        for i, block in enumerate(blocks, 1)
    ]
    script = "set -euo pipefail\n" + "\n".join(steps) + "\n"
    home = tmp_path / "home"  # `board login` keeps its token under ~/.config
    home.mkdir()
    tour_env = os.environ | {"HOME": str(home), "BOARD_TARGET": addresses.board}

    with make_run(work, addresses, processes) as proc:
        wait_until_announced(proc, processes.log_dir / "make-run.log")
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=work,
            env=tour_env,
            input=PASSWORD + "\n",  # what the reader types at the tour's password prompt
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, (
            f"the tour failed (exit {done.returncode})\n--- stdout\n{done.stdout[-6000:]}\n"
            f"--- stderr\n{done.stderr[-6000:]}\n--- make run\n{_tail(processes.log_dir / 'make-run.log')}"
            f"\n--- the board\n{_tail(work / 'var' / 'torchserve' / 'board.log')}"
        )
    # What the tour saved: the overlay preview and Node's preview (JPEG), the mask and its overlay (PNG).
    for name in ("overlay.jpg", "node-preview.jpg"):
        assert (work / name).read_bytes()[:3] == b"\xff\xd8\xff", name
    if serving == "torchserve":
        for name in ("mask.png", "mask-overlay.png"):
            assert (work / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    else:
        assert "outputs" in (work / "answer.json").read_text()
    assert proc.returncode == 0, "`launcher run` stops cleanly on SIGTERM"


def test_the_tour_is_marked_and_uses_the_default_addresses() -> None:
    """A person's `make run` listens on the default addresses; the tour must talk to those."""
    script = "\n".join(tour_script((REPO_ROOT / "README.md").read_text()))
    assert "127.0.0.1:50051" in script and "127.0.0.1:8080" in script
    assert "127.0.0.1:8085" not in script  # the OIP server's block is SERVING=oip's alone
    oip = "\n".join(tour_script((REPO_ROOT / "README.md").read_text(), "oip"))
    assert "127.0.0.1:8085" in oip and "127.0.0.1:8080" not in oip
    addresses = Addresses(
        "127.0.0.1:1", "127.0.0.1:2", {name: 10 + i for i, name in enumerate(PORT_NAMES)}, 3
    )
    assert "127.0.0.1:50051" not in at_these_addresses(script, addresses)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_installs_the_node_client_the_tour_uses() -> None:
    """The tour runs `node clients/node/flow.js` after `make run` alone: `make run` must install it."""
    dry_run = subprocess.run(
        ["make", "-n", "-W", "clients/node/package-lock.json", "run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    assert "npm ci --prefix clients/node" in dry_run.stdout
    assert "node clients/node/flow.js" in "\n".join(tour_script((REPO_ROOT / "README.md").read_text()))
