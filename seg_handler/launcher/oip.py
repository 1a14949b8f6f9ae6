"""The OIP model server process (`make run SERVING=oip`): start it with the OIP virtual environment's Python,
wait until it is ready to infer, stop it.

Ready means the same as TorchServe's gate: the server answers ServerReady and ModelReady true over the Open
Inference Protocol's own gRPC (clients/oip.py), and the process is still the one we started. Like TorchServe
it runs in a process group of its own, with a pid file in the runtime dir, and is stopped by it.
"""

from __future__ import annotations

import os
import subprocess
import time

from seg_handler.launcher import processes
from seg_handler.launcher.settings import REPO_ROOT, LaunchError, ServeSettings
from seg_handler.launcher.torchserve import WORKER_ENV

MODULE = "seg_handler.oip"


def server_command(settings: ServeSettings) -> list[str]:
    """The OIP server's command line: our KServe model over the export's ``.pt2``."""
    return [
        str(settings.oip_python),
        "-m",
        MODULE,
        "--model-dir",
        str(settings.oip_model_dir),
        "--model-name",
        settings.model_name,
        "--host",
        settings.host,
        "--port",
        str(settings.oip_port),
    ]


def start(settings: ServeSettings) -> subprocess.Popen[bytes]:
    """Start the OIP server in its own process group and wait until its model is ready.

    Raises LaunchError when .venv-oip or the ``.pt2`` is missing, a server already runs from this runtime dir,
    it exits, or the model is not ready within ``settings.ready_timeout_s``.
    """
    if not settings.oip_python.exists():
        raise LaunchError(f"{settings.oip_python} not found; create the OIP server's venv with `make oip`")
    program = settings.oip_model_dir / "model.pt2"
    if not program.is_file():
        raise LaunchError(f"{program} not found; build it with `make model`")
    running = running_pid(settings)
    if running is not None:
        raise LaunchError(f"the OIP server already runs from {settings.runtime_dir} (pid {running})")
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    env = {**WORKER_ENV, **os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = processes.start(server_command(settings), settings.oip_log_file, env=env, cwd=REPO_ROOT)
    settings.oip_pid_file.write_text(str(proc.pid))
    try:
        wait_ready(settings, proc)
    except BaseException:
        processes.stop(proc)
        settings.oip_pid_file.unlink(missing_ok=True)
        raise
    return proc


def wait_ready(settings: ServeSettings, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ServerReady and ModelReady until both are true; raises LaunchError on exit or timeout."""
    from clients.oip import OipClient
    from clients.segment import SegmentError

    deadline = time.monotonic() + settings.ready_timeout_s
    last: object = "no answer yet"
    with OipClient(settings.grpc_inference_target, settings.model_name, timeout_s=5) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LaunchError(
                    f"the OIP server exited with {proc.returncode}; see {settings.oip_log_file}\n"
                    f"{processes.log_tail(settings.oip_log_file)}"
                )
            try:
                if client.server_ready() and client.model_ready():
                    return
                last = "not ready"
            except SegmentError as exc:
                last = exc
            time.sleep(0.5)
    raise LaunchError(
        f"the OIP server's model not ready after {settings.ready_timeout_s:.0f}s ({last}); "
        f"see {settings.oip_log_file}"
    )


def stop(settings: ServeSettings) -> bool:
    """Stop the OIP server started from ``settings.runtime_dir``; False when none was running."""
    pid = running_pid(settings)
    settings.oip_pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    processes.stop_process(pid)
    return True


def running_pid(settings: ServeSettings) -> int | None:
    """The pid of the OIP server started from ``settings.runtime_dir`` while it runs, else None."""
    return processes.recorded_pid(settings.oip_pid_file, MODULE.encode())
