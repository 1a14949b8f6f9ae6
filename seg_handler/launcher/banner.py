"""What `run` and `start` print once everything answers: the served weights and a cheat sheet of endpoints
and paste-ready commands."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from seg_handler.launcher.settings import REPO_ROOT, ServeSettings


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


def _oip_endpoints(settings: ServeSettings) -> list[str]:
    """The OIP server's endpoint, log and a grpcurl call (it has no reflection: the .proto is in protos/)."""
    target = settings.grpc_inference_target
    grpcurl = f"grpcurl -plaintext -import-path {REPO_ROOT / 'protos'} -proto inference/grpc_predict_v2.proto"
    body = (
        f'"{{\\"model_name\\":\\"{settings.model_name}\\",\\"inputs\\":[{{\\"name\\":\\"image\\",'
        '\\"datatype\\":\\"BYTES\\",\\"shape\\":[1],'
        '\\"contents\\":{\\"bytes_contents\\":[\\"$(base64 -w0 photo.jpg)\\"]}}]}"'
    )
    return [
        f"OIP v2 gRPC inference       {target}  (KServe, {settings.oip_model_dir / 'model.pt2'})",
        f"Logs                        {settings.oip_log_file}",
        "",
        "Try:",
        f"  {grpcurl} {target} inference.GRPCInferenceService/ServerReady",
        f'  {grpcurl} -d \'{{"name": "{settings.model_name}"}}\' {target} '
        "inference.GRPCInferenceService/ModelMetadata",
        f"  {grpcurl} -d {body} \\",
        f"    {target} inference.GRPCInferenceService/ModelInfer",
    ]


def describe_endpoints(settings: ServeSettings, board_address: str | None, web_url: str | None = None) -> str:
    """Human-readable endpoints, logs, key file and copy-paste examples (printed by `run` and `start`)."""
    if settings.serving == "oip":
        return "\n".join(_oip_endpoints(settings) + _board_lines(settings, board_address, web_url))
    proto_dir = settings.runtime_dir / "protos"
    lines = [
        f"TorchServe REST inference   {settings.inference_url}",
        f"TorchServe REST management  {settings.management_url}",
        f"TorchServe metrics          {settings.metrics_url}/metrics",
        f"TorchServe gRPC inference   {settings.grpc_inference_target}",
        f"TorchServe gRPC management  {settings.grpc_management_target}",
    ]
    if board_address:
        lines += _board_endpoint(settings, board_address, web_url)
    logs = f"{settings.log_file}" + (f", {settings.board_log_file}" if board_address else "")
    key = settings.inference_key_file
    grpc_body = (
        f'"{{\\"model_name\\":\\"{settings.model_name}\\",'
        '\\"input\\":{\\"data\\":\\"$(base64 -w0 photo.jpg)\\"}}"'
    )
    lines += [
        f"Logs                        {logs}",
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
    return "\n".join(lines + _board_lines(settings, board_address, web_url))


def _board_endpoint(settings: ServeSettings, board_address: str, web_url: str | None) -> list[str]:
    lines = [f"Board server gRPC           {board_address}  (accounts on; reflection for grpcurl)"]
    if web_url:
        lines.append(f"Board web app (browser)     {web_url}/  (Connect and gRPC-Web on the same address)")
    if settings.board_metrics_address.lower() not in ("", "none", "off"):
        lines.append(f"Board metrics               http://{settings.board_metrics_address}/metrics")
    return lines


def _board_lines(settings: ServeSettings, board_address: str | None, web_url: str | None) -> list[str]:
    """The board's endpoint (with an OIP server: its log too), the web app's address and the paste-ready
    commands."""
    lines: list[str] = []
    if board_address:
        board = f"board --target {board_address}"
        if settings.serving == "oip":
            lines += [
                "",
                *_board_endpoint(settings, board_address, web_url),
                f"Board log                   {settings.board_log_file}",
            ]
        if web_url:
            lines += [
                "",
                f"Open {web_url}/ in a browser: sign up there, post a photo, watch it being tagged.",
            ]
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
    return lines
