"""One real TorchServe for the whole session, shared by every room that tags through it (tests/e2e,
tests/clients, tests/node; tests/serving keeps its own): registered by tests/conftest.py as a plugin. Beside
it, on demand, one real OIP server (KServe, from .venv-oip) over the same export's ``.pt2``.

TorchServe runs on fixed free ports, so tests may stop and start it (an outage, a held PENDING attachment) and
boards reconnect to the same address; ``running_torchserve`` starts it again if an earlier test left it
stopped. Boards are wired to it over gRPC with the inference key file, as `make run` wires them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from seg_handler import launcher as launch
from seg_handler.launcher import oip
from seg_handler.launcher.settings import DEFAULT_OIP_PYTHON, ServeSettings
from seg_handler.launcher.torchserve import CONFIG_TEMPLATE as TORCHSERVE_CONFIG
from tests.board.conftest import RunningServer, start_board_server
from tests.support import REPO_ROOT, Processes

TEST_INPUT_SIZE = 64  # small network input: cheap forwards on a CPU; masks still come at full image size
TEST_ARCH = "deeplabv3_mobilenet_v3_large"


@dataclass
class ModelServer:
    """One model server on fixed free ports, so that boards reconnect to the same address after a restart."""

    settings: launch.ServeSettings
    proc: subprocess.Popen[bytes] | None = field(default=None)
    started_once: bool = False

    @property
    def grpc_target(self) -> str:
        return self.settings.grpc_inference_target

    @property
    def pid_file(self) -> Path:
        return self.settings.pid_file

    def launch(self) -> subprocess.Popen[bytes]:
        return self.launch_with(self.settings)

    def start(self) -> None:
        if self.proc is None:
            if self.started_once:  # boards are wired to its addresses: the same ports again
                self.proc = self.launch()
            else:
                self.proc, self.settings = start_on_free_ports(self.settings, type(self).launch_with)
            self.started_once = True

    @staticmethod
    def launch_with(settings: ServeSettings) -> subprocess.Popen[bytes]:
        return launch.start(settings)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The server's whole process group paused (SIGSTOP), then continued: it accepts connections and
        answers nothing meanwhile, and the calls it holds are answered once it goes on. Cheaper than a stop
        and start (no Java start-up, no model load) for tests that only need it not to answer for a while;
        keep it shorter than the callers' deadlines."""
        assert self.proc is not None, "not running"
        os.killpg(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server and whatever it started by process group (pid), like a crash or a redeploy."""
        if self.proc is not None:
            launch.stop_process(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None
            self.pid_file.unlink(missing_ok=True)


class TorchServe(ModelServer):
    """TorchServe: the Java frontend and its Python workers."""

    @property
    def key_file(self) -> Path:
        return self.settings.key_file

    @property
    def archive_metadata(self) -> dict[str, object]:
        """The served archive's model-meta.json (arch, weights, class_names, archive_sha256, ...)."""
        return launch.archive_metadata(self.settings.model_store / self.settings.archive)


class OipServer(ModelServer):
    """The OIP server: seg_handler/oip under .venv-oip, over the export's .pt2."""

    @property
    def pid_file(self) -> Path:
        return self.settings.oip_pid_file

    @staticmethod
    def launch_with(settings: ServeSettings) -> subprocess.Popen[bytes]:
        return oip.start(settings)


def start_on_free_ports(
    settings: launch.ServeSettings, start: Callable[[launch.ServeSettings], subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], launch.ServeSettings]:
    """``start(settings)``; when a port picked free was taken by another process before the server bound it
    (four xdist workers start servers on port 0 all the time), again on new free ports, up to three times."""
    for attempt in range(3):
        try:
            return start(settings), settings
        except launch.LaunchError as exc:
            if attempt == 2 or not ("Address already in use" in str(exc) or "Failed to bind" in str(exc)):
                raise
            settings = launch.with_free_ports(settings)
    raise AssertionError("unreachable")


@contextmanager
def running(server: ModelServer) -> Iterator[ModelServer]:
    """``server`` started for the block, stopped after it."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def require_oip_environment() -> None:
    """Skip (fail in CI, where `make test` makes it) when the OIP server's .venv-oip is missing."""
    if DEFAULT_OIP_PYTHON.exists():
        return
    message = f"{DEFAULT_OIP_PYTHON} missing: `make oip` creates the OIP server's environment"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def oip_server_for(store: Path, runtime_dir: Path) -> OipServer:
    """An OIP server over ``store``'s oip/deeplabv3/model.pt2 on a free loopback port (not started)."""
    require_oip_environment()
    return OipServer(launch.isolated_settings(store, runtime_dir, ready_timeout_s=300, serving="oip"))


def torchserve_for(store: Path, runtime_dir: Path, ready_timeout_s: float = 300) -> TorchServe:
    """A TorchServe with token auth on free loopback ports and a worker socket of its own over ``store``
    (not started)."""
    return TorchServe(private_serve_settings(store, runtime_dir, ready_timeout_s=ready_timeout_s))


def export_test_archive(store: Path, *options: str) -> Path:
    """``store`` with deeplabv3.mar from `python -m training.export` (mobilenet_v3_large, random weights,
    input 64) and any further export ``options``; returns ``store``."""
    command = [
        sys.executable, "-m", "training.export", "--arch", TEST_ARCH, "--weights", "random",
        "--out", str(store), "--input-size", str(TEST_INPUT_SIZE), *options,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"training.export failed:\n{done.stdout}\n{done.stderr}"
    return store


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by every xdist worker of this run (the parent of their base temps), or this session's
    base temp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``folder``, built by ``build(folder)`` in the first process of this run that asks; the others wait on
    a file lock and reuse it. A build that failed is tried again by the next process that asks."""
    done = folder / ".built"
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            build(folder)
            done.touch()
    return folder


# The suite's TorchServes live for seconds to minutes: their JVMs start on less CPU with C1 only and the
# serial collector, after the shipped flags (docs/testing.md); TorchServe as shipped keeps the JVM's defaults.
TEST_JVM_FLAGS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def private_serve_settings(
    model_store: Path, runtime_dir: Path, *properties: tuple[str, str], ready_timeout_s: float = 240
) -> launch.ServeSettings:
    """Settings of a private TorchServe: free loopback ports and its own worker socket, so that TorchServes
    started side by side (xdist workers, `make run`) never connect to each other's Python worker; TorchServe
    names that socket /tmp/.ts.sock.<initial_worker_port>, 9000 unless told; its JVM starts with
    ``TEST_JVM_FLAGS`` after the shipped ones. ``properties`` go last."""
    settings = launch.isolated_settings(model_store, runtime_dir, ready_timeout_s=ready_timeout_s)
    worker_port = ("initial_worker_port", str(launch.free_port()))
    shipped = launch.read_properties(TORCHSERVE_CONFIG.read_text()).get("vmargs", "")
    vmargs = ("vmargs", f"{shipped} {TEST_JVM_FLAGS}".strip())
    return replace(settings, extra_properties=(worker_port, vmargs, *properties))


@pytest.fixture(scope="session")
def e2e_model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deeplabv3.mar from `python -m training.export` (mobilenet_v3_large, random weights, input 64): built
    once per run and shared by every worker (tests/serving's TorchServe serves it too)."""
    return built_once(run_folder(tmp_path_factory) / "test-model-store", export_test_archive)


@pytest.fixture(scope="session")
def torchserve(e2e_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe with token auth on free loopback ports; tests may stop and start it (same ports)."""
    serve = torchserve_for(e2e_model_store, tmp_path_factory.mktemp("e2e_torchserve"), ready_timeout_s=240)
    with running(serve):
        yield serve


@pytest.fixture(scope="session")
def oip_server(e2e_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OipServer]:
    """The OIP server over the session export's .pt2 (the model TorchServe serves from the .mar)."""
    server = oip_server_for(e2e_model_store, tmp_path_factory.mktemp("e2e_oip"))
    with running(server):
        yield server


@pytest.fixture
def running_torchserve(torchserve: TorchServe) -> TorchServe:
    """The session TorchServe, started again if an earlier test left it stopped."""
    torchserve.start()
    return torchserve


def tagging_flags(
    serve: TorchServe,
    *,
    lease_s: float = 40.0,
    timeout_s: float = 30.0,
    max_attempts: int = 5,
    workers: int = 2,
) -> tuple[str, ...]:
    """board-server flags that wire it to ``serve`` as `make run` does (the inference key file alone), with
    quick polling and short backoff for tests. The lease must exceed the call timeout by 5 s."""
    return (
        "--segmentation-target", serve.grpc_target,
        "--segmentation-token-file", str(serve.settings.inference_key_file),
        "--segmentation-timeout", f"{timeout_s:g}",
        "--tagging-poll", "0.3",
        "--tagging-backoff-max", "1",
        "--tagging-lease", f"{lease_s:g}",
        "--tagging-max-attempts", str(max_attempts),
        "--tagging-workers", str(workers),
    )  # fmt: skip


def start_tagging_board(
    processes: Processes,
    serve: TorchServe,
    database_url: str,
    workdir: Path,
    *,
    lease_s: float = 40.0,
    timeout_s: float = 30.0,
    max_attempts: int = 5,
    workers: int = 2,
    extra: tuple[str, ...] = (),
) -> RunningServer:
    """A board server (auth on) tagging through ``serve``; ``extra`` flags come last, so they win."""
    flags = tagging_flags(
        serve, lease_s=lease_s, timeout_s=timeout_s, max_attempts=max_attempts, workers=workers
    )
    return start_board_server(processes, database_url, workdir, extra=(*flags, *extra))
