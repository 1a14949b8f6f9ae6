"""The OIP model server (run it with the OIP virtual environment's Python, ``.venv-oip/bin/python``):

    python -m seg_handler.oip --model-dir model_store/oip/deeplabv3 --port 8085

serves ``model.pt2`` of ``--model-dir`` (training.export writes it) as ``--model-name`` over the Open
Inference Protocol v2's gRPC service on ``--host`` (loopback by default). `make run SERVING=oip` starts it
through the launcher.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("seg_handler.oip")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seg_handler.oip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--model-dir", type=Path, required=True, help="folder with model.pt2, model-meta.json"
    )
    parser.add_argument("--model-name", default="deeplabv3")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085, help="gRPC port (0: any free one, logged)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default (one per core)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds calls in flight get on SIGTERM")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    if not (args.model_dir / "model.pt2").is_file():
        logger.error("%s has no model.pt2; build it with `make model`", args.model_dir)
        return 2
    from seg_handler.oip.model import SegmentationModel
    from seg_handler.oip.server import serve

    model = SegmentationModel(args.model_name, args.model_dir, torch_threads=args.torch_threads)
    try:
        asyncio.run(serve(model, args.host, args.port, grace_s=args.grace))
    except (OSError, RuntimeError) as exc:
        logger.error("the OIP server cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
