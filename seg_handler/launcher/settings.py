"""Where TorchServe (and the board `run` starts beside it) listens and keeps its state.

One frozen ServeSettings, built from flags > SEG_* environment variables > defaults in ``build_settings``;
nothing else in the launcher reads the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from seg_handler.launcher.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNTIME_DIR = REPO_ROOT / "var" / "torchserve"
DEFAULT_OIP_RUNTIME_DIR = REPO_ROOT / "var" / "oip"
DEFAULT_OIP_PYTHON = REPO_ROOT / ".venv-oip" / "bin" / "python"
MODEL_NAME = "deeplabv3"
SERVINGS = ("torchserve", "oip")


class LaunchError(RuntimeError):
    """TorchServe or the board did not start, did not get ready, or the settings are unusable; the message
    says why."""


@dataclass(frozen=True)
class ServeSettings:
    """Where TorchServe (or, with ``serving`` oip, the OIP server) listens and keeps its state, and where the
    board that `run` starts listens."""

    model_store: Path
    runtime_dir: Path = DEFAULT_RUNTIME_DIR
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    model_name: str = MODEL_NAME
    archive: str = "deeplabv3.mar"
    ready_timeout_s: float = 180.0
    board_address: str = "127.0.0.1:50051"
    board_metrics_address: str = "127.0.0.1:9464"
    board_http_address: str = "127.0.0.1:8088"  # the web app, Connect and gRPC-Web
    extra_properties: tuple[tuple[str, str], ...] = ()
    # torchserve, or oip: the Open Inference Protocol server (seg_handler/oip) over the export's .pt2.
    serving: str = "torchserve"
    oip_port: int = 8085
    oip_python: Path = DEFAULT_OIP_PYTHON

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def grpc_inference_target(self) -> str:
        """Where the board sends its inference calls: TorchServe's gRPC port, or the OIP server's."""
        port = self.oip_port if self.serving == "oip" else self.grpc_inference_port
        return f"{self.host}:{port}"

    @property
    def oip_model_dir(self) -> Path:
        """The OIP server's model folder, as training.export writes it beside the archive."""
        return self.model_store / "oip" / self.model_name

    @property
    def oip_pid_file(self) -> Path:
        return self.runtime_dir / "oip-server.pid"

    @property
    def oip_log_file(self) -> Path:
        return self.runtime_dir / "oip-server.out"

    @property
    def grpc_management_target(self) -> str:
        return f"{self.host}:{self.grpc_management_port}"

    @property
    def config_path(self) -> Path:
        return self.runtime_dir / "config.properties"

    @property
    def key_file(self) -> Path:
        return self.runtime_dir / "key_file.json"

    @property
    def inference_key_file(self) -> Path:
        """The inference key alone, kept current by the key renewer: what the board is given."""
        return self.runtime_dir / "inference.key"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "torchserve.pid"

    @property
    def renewer_pid_file(self) -> Path:
        return self.runtime_dir / "renewer.pid"

    @property
    def log_file(self) -> Path:
        return self.runtime_dir / "torchserve.out"

    @property
    def board_log_file(self) -> Path:
        """The log of the board that `run` starts (the terminal keeps the banner and the commands)."""
        return self.runtime_dir / "board.log"


def isolated_settings(
    model_store: Path, runtime_dir: Path, *, ready_timeout_s: float = 180.0, serving: str = "torchserve"
) -> ServeSettings:
    """ServeSettings for a private TorchServe or OIP server (tests, benchmarks): free loopback ports, its own
    runtime dir.

    The ports are picked once, so the same settings object restarts the server on the same addresses.
    """
    base = ServeSettings(
        model_store=model_store, runtime_dir=runtime_dir, ready_timeout_s=ready_timeout_s, serving=serving
    )
    return with_free_ports(base)


def with_free_ports(settings: ServeSettings) -> ServeSettings:
    """``settings`` on ports free now (a port picked free may be taken by another process before the server
    binds it: start again with new ones)."""
    host = settings.host
    return replace(
        settings,
        oip_port=free_port(host),
        inference_port=free_port(host),
        management_port=free_port(host),
        metrics_port=free_port(host),
        grpc_inference_port=free_port(host),
        grpc_management_port=free_port(host),
        board_http_address=f"{host}:{free_port(host)}",
    )


def build_settings(args: argparse.Namespace, env: Mapping[str, str]) -> ServeSettings:
    """ServeSettings from parsed flags, falling back to SEG_* environment variables, then defaults."""

    def pick(flag: object, name: str, default: str) -> str:
        return str(flag) if flag is not None else env.get(name, default)

    base = ServeSettings(model_store=Path("model_store"))
    serving = pick(getattr(args, "serving", None), "SEG_SERVING", "torchserve").strip().lower()
    if serving not in SERVINGS:
        raise LaunchError(f"serving must be torchserve or oip, got {serving!r}")
    runtime_default = DEFAULT_OIP_RUNTIME_DIR if serving == "oip" else base.runtime_dir
    return ServeSettings(
        serving=serving,
        oip_port=int(pick(None, "SEG_OIP_PORT", str(base.oip_port))),
        oip_python=Path(pick(None, "SEG_OIP_PYTHON", str(base.oip_python))),
        model_store=Path(
            pick(getattr(args, "model_store", None), "SEG_MODEL_STORE", "model_store")
        ).resolve(),
        runtime_dir=Path(pick(getattr(args, "runtime_dir", None), "SEG_RUNTIME_DIR", str(runtime_default))),
        host=pick(None, "SEG_HOST", base.host),
        inference_port=int(pick(None, "SEG_INFERENCE_PORT", str(base.inference_port))),
        management_port=int(pick(None, "SEG_MANAGEMENT_PORT", str(base.management_port))),
        metrics_port=int(pick(None, "SEG_METRICS_PORT", str(base.metrics_port))),
        grpc_inference_port=int(pick(None, "SEG_GRPC_INFERENCE_PORT", str(base.grpc_inference_port))),
        grpc_management_port=int(pick(None, "SEG_GRPC_MANAGEMENT_PORT", str(base.grpc_management_port))),
        ready_timeout_s=float(pick(getattr(args, "timeout", None), "SEG_READY_TIMEOUT", "180")),
        board_address=env.get("BOARD_ADDRESS", base.board_address),
        board_metrics_address=env.get("BOARD_METRICS_ADDRESS", base.board_metrics_address),
        board_http_address=env.get("BOARD_HTTP_ADDRESS", base.board_http_address),
    )
