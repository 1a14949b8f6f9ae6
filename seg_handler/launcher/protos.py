"""TorchServe's .proto files for grpcurl: its gRPC ports have no server reflection.

They come from the installed TorchServe jar (and googleapis-common-protos), never from the repository.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path


def export_protos(dest: Path) -> Path:
    """Put TorchServe's inference/management .proto files (+ google/rpc/status.proto) under ``dest``."""
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
