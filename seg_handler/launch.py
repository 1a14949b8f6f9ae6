"""Start, wait for, and stop TorchServe with our settings; `run` adds the board server beside it.

    python -m seg_handler.launch start --model-store model_store     # returns once the model is READY
    python -m seg_handler.launch stop
    python -m seg_handler.launch run --model-store model_store       # foreground, Ctrl-C stops both

Whatever runs TorchServe renews its keys before they expire and keeps ``inference.key`` (the inference key
alone) current for the board (seg_handler/keys.py): `run` in a thread, `start` in a detached `renew` process
that `stop` stops.

The Java frontend is started directly (the same command line `torchserve --start` builds, plus ``-ncs``)
rather than through the ``torchserve`` script: that script keeps ONE pid file in /tmp for the whole machine,
so two servers (tests beside `make serve`) refuse to start or stop each other. We own the pid, start it in a
new process group (its Python workers join it) and stop it by that group.

Settings come from flags and SEG_* environment variables in ``build_settings``; nothing else reads env.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from seg_handler import keys

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_TEMPLATE = Path(__file__).resolve().parent / "config.properties"
DEFAULT_RUNTIME_DIR = REPO_ROOT / "var" / "torchserve"
MODEL_NAME = "deeplabv3"
# Environment of TorchServe's Python workers, under whatever the caller's environment sets. TorchServe applies
# no OpenMP settings to a worker, and libgomp's default spin-waits between torch's parallel regions: measured
# with the 520 px pipeline (bench/serving.py) on the shared 2-core box under load, 2 torch threads then spent
# ~1,200 ms of CPU per request instead of ~310 ms and took 1.7 s instead of 0.43 s, and the spinning starves
# the Java frontend, the board and any other worker. PASSIVE sleeps instead. On a GPU the forward runs on
# the device and this matters little.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


class LaunchError(RuntimeError):
    """TorchServe did not start, did not get ready, or the settings are unusable; the message says why."""


@dataclass(frozen=True)
class ServeSettings:
    """Where TorchServe listens and keeps its state."""

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
    extra_properties: tuple[tuple[str, str], ...] = ()

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
        return f"{self.host}:{self.grpc_inference_port}"

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def isolated_settings(
    model_store: Path, runtime_dir: Path, *, ready_timeout_s: float = 180.0
) -> ServeSettings:
    """ServeSettings for a private TorchServe (tests, benchmarks): free loopback ports, its own runtime dir.

    The ports are picked once, so the same settings object restarts TorchServe on the same addresses.
    """
    base = ServeSettings(model_store=model_store, runtime_dir=runtime_dir, ready_timeout_s=ready_timeout_s)
    return replace(
        base,
        inference_port=free_port(base.host),
        management_port=free_port(base.host),
        metrics_port=free_port(base.host),
        grpc_inference_port=free_port(base.host),
        grpc_management_port=free_port(base.host),
    )


def build_settings(args: argparse.Namespace, env: Mapping[str, str]) -> ServeSettings:
    """ServeSettings from parsed flags, falling back to SEG_* environment variables, then defaults."""

    def pick(flag: object, name: str, default: str) -> str:
        return str(flag) if flag is not None else env.get(name, default)

    base = ServeSettings(model_store=Path("model_store"))
    return ServeSettings(
        model_store=Path(
            pick(getattr(args, "model_store", None), "SEG_MODEL_STORE", "model_store")
        ).resolve(),
        runtime_dir=Path(pick(getattr(args, "runtime_dir", None), "SEG_RUNTIME_DIR", str(base.runtime_dir))),
        host=pick(None, "SEG_HOST", base.host),
        inference_port=int(pick(None, "SEG_INFERENCE_PORT", str(base.inference_port))),
        management_port=int(pick(None, "SEG_MANAGEMENT_PORT", str(base.management_port))),
        metrics_port=int(pick(None, "SEG_METRICS_PORT", str(base.metrics_port))),
        grpc_inference_port=int(pick(None, "SEG_GRPC_INFERENCE_PORT", str(base.grpc_inference_port))),
        grpc_management_port=int(pick(None, "SEG_GRPC_MANAGEMENT_PORT", str(base.grpc_management_port))),
        ready_timeout_s=float(pick(getattr(args, "timeout", None), "SEG_READY_TIMEOUT", "180")),
        board_address=env.get("BOARD_ADDRESS", base.board_address),
        board_metrics_address=env.get("BOARD_METRICS_ADDRESS", base.board_metrics_address),
    )


def read_properties(text: str) -> dict[str, str]:
    """Parse the key=value lines of a Java properties file (comments and blanks skipped)."""
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def render_config(settings: ServeSettings, template: str) -> str:
    """The runtime config.properties: the template's settings plus addresses, ports and the model store."""
    props = read_properties(template)
    store = settings.model_store.resolve()
    props.update(
        {
            "inference_address": settings.inference_url,
            "management_address": settings.management_url,
            "metrics_address": settings.metrics_url,
            "grpc_inference_address": settings.host,
            "grpc_management_address": settings.host,
            "grpc_inference_port": str(settings.grpc_inference_port),
            "grpc_management_port": str(settings.grpc_management_port),
            "model_store": str(store),
            # A regex list; only archives inside our own model store may ever be loaded.
            "allowed_urls": f"file://{store}/.*",
            "load_models": f"{settings.model_name}={settings.archive}",
        }
    )
    props.update(dict(settings.extra_properties))
    lines = ["# Generated by seg_handler.launch from seg_handler/config.properties; edit that file instead."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def java_command(settings: ServeSettings) -> list[str]:
    """The Java frontend's command line, as `torchserve --start --ncs` builds it."""
    import ts  # torchserve's package; its jar lives in ts/frontend

    ts_home = Path(ts.__file__).resolve().parent.parent
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else (shutil.which("java") or "java")
    props = read_properties(settings.config_path.read_text())
    vmargs = props.get("vmargs", "").split()
    return [
        java,
        f"-Dmodel_server_home={ts_home}",
        *vmargs,
        "-cp",
        f".:{ts_home / 'ts' / 'frontend' / '*'}",
        "org.pytorch.serve.ModelServer",
        "--python",
        sys.executable,
        "-f",
        str(settings.config_path),
        "-s",
        str(settings.model_store.resolve()),
        "-ncs",
    ]


def read_keys(key_file: Path) -> dict[str, str]:
    """{'inference': key, 'management': key} from TorchServe's key_file.json; raises LaunchError."""
    try:
        raw = json.loads(key_file.read_text())
        return {kind: str(raw[kind]["key"]) for kind in ("inference", "management")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LaunchError(f"cannot read TorchServe keys from {key_file}: {exc}") from exc


def model_status(settings: ServeSettings) -> list[dict[str, object]]:
    """The workers of our model from the management API (raises OSError/URLError while not up)."""
    keys = read_keys(settings.key_file)
    request = urllib.request.Request(  # noqa: S310 - http URL on loopback, from settings
        f"{settings.management_url}/models/{settings.model_name}",
        headers={"Authorization": f"Bearer {keys['management']}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback URL from settings
        described = json.loads(response.read())
    workers = described[0].get("workers", []) if described else []
    return [dict(w) for w in workers]


def start(settings: ServeSettings) -> subprocess.Popen[bytes]:
    """Write the runtime config, start TorchServe in its own process group and wait until the model is ready.

    Raises LaunchError when the archive is missing, a server already runs from this runtime dir, TorchServe
    exits, or no worker is READY within ``settings.ready_timeout_s``.
    """
    archive = settings.model_store / settings.archive
    if not archive.is_file():
        raise LaunchError(f"{archive} not found; build it with `make model`")
    running = _running_pid(settings)
    if running is not None:
        raise LaunchError(f"TorchServe already runs from {settings.runtime_dir} (pid {running}); `make stop`")
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    settings.key_file.unlink(missing_ok=True)
    # inference.key stays until the new key replaces it (a board reading it meanwhile finds TorchServe down,
    # not a missing file to complain about).
    settings.config_path.write_text(render_config(settings, CONFIG_TEMPLATE.read_text()))
    log = settings.log_file.open("ab")
    try:
        proc = subprocess.Popen(
            java_command(settings),
            cwd=settings.runtime_dir,  # key_file.json and logs/ land here
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**WORKER_ENV, **os.environ, "LOG_LOCATION": str(settings.runtime_dir / "logs")},
        )
    finally:
        log.close()
    settings.pid_file.write_text(str(proc.pid))
    try:
        export_protos(settings.runtime_dir / "protos")
        wait_ready(settings, proc)
    except BaseException:
        stop_process(proc.pid)
        settings.pid_file.unlink(missing_ok=True)
        raise
    return proc


def wait_ready(settings: ServeSettings, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll the management API until a worker of the model is READY; raises LaunchError on exit/timeout."""
    deadline = time.monotonic() + settings.ready_timeout_s
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LaunchError(
                f"TorchServe exited with {proc.returncode}; see {settings.log_file}\n{_tail(settings)}"
            )
        try:
            # The new inference key for the board as soon as TorchServe has written it.
            keys.write_inference_key(settings.inference_key_file, read_keys(settings.key_file)["inference"])
            workers = model_status(settings)
            if any(w.get("status") == "READY" for w in workers):
                return
            last = workers
        except (OSError, LaunchError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise LaunchError(
        f"model not ready after {settings.ready_timeout_s:.0f}s ({last}); see {settings.log_file}"
    )


def stop_process(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``pid`` (Java and its Python workers), then SIGKILL what is left.

    The group is SIGKILLed only while its id is certainly still ours: the leader alive, or our child kept a
    zombie (not reaped) until then, or other members of the group still running (they pin the id). A pid
    whose group is gone may already lead someone else's new group, and must not be signalled.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.2)
    if _running(pid) or _is_zombie_child(pid) or _group_members(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our zombie, now that the group is down


def stop(settings: ServeSettings) -> bool:
    """Stop the key renewer and the TorchServe started from ``settings.runtime_dir``; False when no
    TorchServe was running."""
    keys.stop_detached(settings.renewer_pid_file)
    pid = _running_pid(settings)
    settings.pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    stop_process(pid)
    settings.key_file.unlink(missing_ok=True)
    settings.inference_key_file.unlink(missing_ok=True)
    return True


def key_renewer(settings: ServeSettings) -> keys.KeyRenewer:
    """The renewer of the keys of the TorchServe configured in ``settings.runtime_dir``."""
    props = read_properties(settings.config_path.read_text())
    return keys.KeyRenewer(
        settings.key_file,
        settings.inference_key_file,
        props.get("management_address", settings.management_url),
        keys.lifetime_from_properties(props),
    )


def start_renewer(settings: ServeSettings) -> int:
    """The detached `renew` process for a TorchServe started with ``start`` (`make serve`); its pid."""
    return keys.start_detached(
        settings.runtime_dir, settings.renewer_pid_file, settings.runtime_dir / "renewer.log"
    )


def renew_keys(settings: ServeSettings) -> int:
    """Renew the keys of the TorchServe in ``settings.runtime_dir`` until it is gone or SIGTERM/SIGINT."""
    stop_event = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop_event.set())
    if _running_pid(settings) is None:
        logger.error("no TorchServe runs from %s; nothing to renew", settings.runtime_dir)
        return 1
    renewer = key_renewer(settings)
    logger.info("renewing TorchServe's keys in %s (lifetime %s)", settings.runtime_dir, renewer.lifetime)
    renewer.run(stop_event, alive=lambda: _running_pid(settings) is not None)
    logger.info("key renewer for %s stops", settings.runtime_dir)
    return 0


def _running_pid(settings: ServeSettings) -> int | None:
    try:
        pid = int(settings.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and _is_torchserve(pid) else None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie child of ours is left unreaped, holding its group id)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie_child(pid)


def _is_zombie_child(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def _group_members(pgid: int) -> list[int]:
    """Processes (other than ``pgid`` itself) in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pgid:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _is_torchserve(pid: int) -> bool:
    try:
        return b"org.pytorch.serve.ModelServer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _tail(settings: ServeSettings, lines: int = 30) -> str:
    try:
        return "\n".join(settings.log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def export_protos(dest: Path) -> Path:
    """Put TorchServe's inference/management .proto files (+ google/rpc/status.proto) under ``dest``.

    TorchServe's gRPC ports have no reflection, so grpcurl needs them; they come from the installed jar,
    never from the repository.
    """
    from clients.build_protos import extract_torchserve_protos

    dest.mkdir(parents=True, exist_ok=True)
    extract_torchserve_protos(dest)
    # googleapis-common-protos ships google/rpc/status.proto beside its generated module.
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    status_proto = Path(spec.origin).with_name("status.proto") if spec and spec.origin else None
    if status_proto is not None and status_proto.is_file():
        (dest / "google" / "rpc").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(status_proto, dest / "google" / "rpc" / "status.proto")
    return dest


def archive_metadata(archive: Path) -> dict[str, object]:
    """The ``model-meta.json`` packed into ``archive`` by training.export ({} if it has none)."""
    with zipfile.ZipFile(archive) as mar:
        if "model-meta.json" not in mar.namelist():
            return {}
        meta = json.loads(mar.read("model-meta.json"))
    return dict(meta) if isinstance(meta, dict) else {}


def weights_banner(settings: ServeSettings) -> str:
    """What the served weights are; for an untrained archive, a loud banner with the ways to real weights."""
    archive = settings.model_store / settings.archive
    meta = archive_metadata(archive)
    arch = str(meta.get("arch", "unknown"))
    if not meta.get("untrained", False):
        weights, sha256 = meta.get("weights"), meta.get("sha256")
        return f"Model {settings.model_name}: {arch}, weights {weights} (sha256 {sha256})"
    rule = "!" * 100
    return "\n".join(
        [
            rule,
            f"!! Model {settings.model_name} ({arch}) is UNTRAINED: weights '{meta.get('weights')}'.",
            "!! Its masks and labels are meaningless, and every answer and attachment says untrained=true.",
            "!! To serve real weights, then rebuild the archive and restart:",
            "!!   - put torchvision's COCO_WITH_VOC_LABELS file in the TORCH_HOME cache",
            "!!     ($TORCH_HOME/hub/checkpoints/, default ~/.cache/torch/hub/checkpoints/), e.g.",
            "!!     deeplabv3_resnet101_coco-586e9e4e.pth, and run `make model` (MODEL_WEIGHTS=auto);",
            "!!   - or your own checkpoint or state_dict:",
            "!!     `make model MODEL_WEIGHTS=/path/to/deeplabv3-voc2012.pt`;",
            "!!   - or train one: python -m training.train --data-path VOCdevkit/VOC2012 ... "
            "(see docs/training.md).",
            rule,
        ]
    )


def describe_endpoints(settings: ServeSettings, board_address: str | None) -> str:
    """Human-readable endpoints, key file and copy-paste examples (printed by `run` and `start`)."""
    proto_dir = settings.runtime_dir / "protos"
    lines = [
        f"TorchServe REST inference   {settings.inference_url}",
        f"TorchServe REST management  {settings.management_url}",
        f"TorchServe metrics          {settings.metrics_url}/metrics",
        f"TorchServe gRPC inference   {settings.grpc_inference_target}",
        f"TorchServe gRPC management  {settings.grpc_management_target}",
    ]
    if board_address:
        lines.append(f"Board server gRPC           {board_address}  (accounts on; reflection for grpcurl)")
        if settings.board_metrics_address.lower() not in ("", "none", "off"):
            lines.append(f"Board metrics               http://{settings.board_metrics_address}/metrics")
    key = settings.inference_key_file
    grpc_body = (
        f'"{{\\"model_name\\":\\"{settings.model_name}\\",'
        '\\"input\\":{\\"data\\":\\"$(base64 -w0 photo.jpg)\\"}}"'
    )
    lines += [
        f"Inference key file          {key}  (renewed before it expires; key_file.json has all keys)",
        "",
        "Try:",
        f"  TOKEN=$(cat {key})",
        f'  curl -s -H "Authorization: Bearer $TOKEN" -T photo.jpg {settings.inference_url}/predictions/'
        f"{settings.model_name} | head -c 300",
        f'  curl -s -H "Authorization: Bearer $TOKEN" -H "Accept: image/png" -T photo.jpg '
        f"{settings.inference_url}/predictions/{settings.model_name} -o mask.png",
        f"  grpcurl -plaintext -import-path {proto_dir} -proto inference.proto "
        f'-H "authorization: Bearer $TOKEN" \\',
        f"    -d {grpc_body} {settings.grpc_inference_target} "
        "org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions",
        f"  segment photo.jpg --out mask.png --overlay overlay.png --key-file {key} \\",
        f"    --inference-port {settings.inference_port} --grpc-port {settings.grpc_inference_port} "
        f"--management-port {settings.management_port}",
    ]
    if board_address:
        board = f"board --target {board_address}"
        lines += [
            "",
            "Sign in to the board (writes need an account; passwords are asked, never given as flags):",
            f"  {board} users create --name Ada --email ada@example.org",
            f"  {board} login --email ada@example.org        # keeps the token in ~/.config/board/token",
            f"  {board} whoami",
            f"  {board} demo                                 # photos in, labels out (signs up if needed)",
            f"  {board} posts create --title Hello --content 'First post'",
            f"  {board} attach POST_ID photo.jpg --wait",
            f"  {board} posts list --filter 'label.dog >= 0.2' --with-attachments",
            "  # grpcurl: SignIn reads its JSON from stdin (the password stays out of ps), then the token:",
            "  read -rsp 'Password: ' PASSWORD; echo",
            '  TOKEN=$(printf \'{"email": "ada@example.org", "password": "%s"}\' "$PASSWORD" | '
            f"grpcurl -plaintext -d @ {board_address} board.v1.BoardService/SignIn | "
            "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            f'  grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d \'{{"id": 0}}\' {board_address} '
            "board.v1.BoardService/GetUser",
        ]
    return "\n".join(lines)


def _board_command(settings: ServeSettings) -> list[str] | None:
    exe = Path(sys.executable).parent / "board-server"
    found = str(exe) if exe.exists() else shutil.which("board-server")
    if not found:
        return None
    # The board tags attachments through this TorchServe's gRPC API with its token (issue 6).
    return [
        found,
        "--address",
        settings.board_address,
        "--segmentation-target",
        settings.grpc_inference_target,
        "--segmentation-token-file",
        str(settings.inference_key_file),  # the inference key alone, never the management key
        "--segmentation-model",
        settings.model_name,
        "--metrics-address",
        settings.board_metrics_address,
    ]


def run(settings: ServeSettings) -> int:
    """Start TorchServe and the board server, print where they listen, stop both on Ctrl-C/SIGTERM."""
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    board: subprocess.Popen[bytes] | None = None
    torchserve: subprocess.Popen[bytes] | None = None
    renewer: keys.RenewerThread | None = None
    try:
        torchserve = start(settings)
        renewer = keys.RenewerThread(key_renewer(settings))
        renewer.start()
        command = _board_command(settings)
        if command is None:
            logger.warning("board-server not installed; running TorchServe alone")
        else:
            board = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
        sys.stdout.write(weights_banner(settings) + "\n")
        sys.stdout.write(describe_endpoints(settings, settings.board_address if board else None) + "\n")
        sys.stdout.write("Ctrl-C stops everything.\n")
        sys.stdout.flush()
        while not stop_requested:
            if torchserve.poll() is not None:
                logger.error("TorchServe exited with %s; see %s", torchserve.returncode, settings.log_file)
                return 1
            if board is not None and board.poll() is not None:
                logger.error("board-server exited with %s", board.returncode)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if board is not None:
            stop_process(board.pid)
        if renewer is not None:
            renewer.stop()
        if torchserve is not None:
            stop(settings)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("start", "stop", "run", "wait-ready", "config", "renew"))
    parser.add_argument("--model-store", default=None, help="folder holding deeplabv3.mar (SEG_MODEL_STORE)")
    parser.add_argument("--runtime-dir", default=None, help="config, key file, logs (SEG_RUNTIME_DIR)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for READY")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    settings = build_settings(args, os.environ)
    try:
        if args.command == "start":
            start(settings)
            start_renewer(settings)
            sys.stdout.write(weights_banner(settings) + "\n")
            sys.stdout.write(describe_endpoints(settings, None) + "\n`make stop` stops it.\n")
        elif args.command == "stop":
            sys.stdout.write("TorchServe stopped.\n" if stop(settings) else "TorchServe was not running.\n")
        elif args.command == "wait-ready":
            wait_ready(settings)
        elif args.command == "config":
            sys.stdout.write(render_config(settings, CONFIG_TEMPLATE.read_text()))
        elif args.command == "renew":
            return renew_keys(settings)
        else:
            return run(replace(settings))
    except LaunchError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
