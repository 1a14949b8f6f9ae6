"""The launcher's command line (`make serve`, `make stop`, `make run`):

    python -m seg_handler.launcher start --model-store model_store     # returns once the model is READY
    python -m seg_handler.launcher stop
    python -m seg_handler.launcher run --model-store model_store       # foreground, Ctrl-C stops both
    python -m seg_handler.launcher run --serving oip                   # the OIP server instead of TorchServe

Whatever runs TorchServe renews its keys before they expire and keeps ``inference.key`` current for the board:
`run` in a thread, `start` in a detached `renew` process that `stop` stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from seg_handler.launcher import oip, renewal, torchserve
from seg_handler.launcher.banner import describe_endpoints, weights_banner
from seg_handler.launcher.run import run
from seg_handler.launcher.settings import LaunchError, ServeSettings, build_settings

logger = logging.getLogger("seg_handler.launcher")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m seg_handler.launcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("start", "stop", "run", "wait-ready", "config", "renew"))
    parser.add_argument("--model-store", default=None, help="folder holding deeplabv3.mar (SEG_MODEL_STORE)")
    parser.add_argument("--runtime-dir", default=None, help="config, key file, logs (SEG_RUNTIME_DIR)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for READY")
    parser.add_argument(
        "--serving",
        choices=("torchserve", "oip"),
        default=None,
        help="the model server: torchserve, or oip (KServe over the .pt2; SEG_SERVING; default torchserve)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    try:
        settings = build_settings(args, os.environ)
        if settings.serving == "oip" and args.command in ("start", "stop", "wait-ready"):
            return _oip_command(args.command, settings)
        if settings.serving == "oip" and args.command != "run":
            raise LaunchError(f"{args.command} is TorchServe's alone (the OIP server has no config or keys)")
        if args.command == "start":
            torchserve.start(settings)
            renewal.start_renewer(settings)
            sys.stdout.write(weights_banner(settings) + "\n")
            sys.stdout.write(describe_endpoints(settings, None) + "\n`make stop` stops it.\n")
        elif args.command == "stop":
            stopped = torchserve.stop(settings)
            sys.stdout.write("TorchServe stopped.\n" if stopped else "TorchServe was not running.\n")
        elif args.command == "wait-ready":
            torchserve.wait_ready(settings)
        elif args.command == "config":
            sys.stdout.write(torchserve.render_config(settings, torchserve.CONFIG_TEMPLATE.read_text()))
        elif args.command == "renew":
            return renewal.renew_keys(settings)
        else:
            return run(settings)
    except LaunchError as exc:
        logger.error("%s", exc)
        return 1
    return 0


def _oip_command(command: str, settings: ServeSettings) -> int:
    """start, stop and wait-ready for the OIP server (`make serve SERVING=oip`, `make stop SERVING=oip`)."""
    if command == "start":
        oip.start(settings)
        sys.stdout.write(describe_endpoints(settings, None) + "\n`make stop SERVING=oip` stops it.\n")
    elif command == "stop":
        stopped = oip.stop(settings)
        sys.stdout.write("The OIP server stopped.\n" if stopped else "The OIP server was not running.\n")
    else:
        oip.wait_ready(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
