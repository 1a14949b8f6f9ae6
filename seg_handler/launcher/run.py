"""`run`: TorchServe (or, with ``serving`` oip, the OIP server) and the board together in the foreground
(`make run`, `make run SERVING=oip`).

The banner and the paste-ready commands are printed only once the model server's model is ready (TorchServe: a
worker READY; the OIP server: ServerReady and ModelReady) and every board process answers its health check, so
that whatever a reader pastes then works. Ctrl-C or SIGTERM stops both, also while they are still starting.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

from seg_handler.launcher import board, keys, oip, processes, torchserve
from seg_handler.launcher.banner import describe_endpoints, weights_banner
from seg_handler.launcher.renewal import key_renewer
from seg_handler.launcher.settings import ServeSettings

logger = logging.getLogger(__name__)


class _StopWhileStartingError(Exception):
    """Ctrl-C or SIGTERM arrived before everything answered: stop what has started."""


def announce(settings: ServeSettings, board_address: str | None, web_url: str | None = None) -> None:
    """The weights, the endpoints and commands, and how to stop: the reader may paste from here on."""
    sys.stdout.write(weights_banner(settings) + "\n")
    sys.stdout.write(describe_endpoints(settings, board_address, web_url) + "\n")
    sys.stdout.write("Ctrl-C stops everything.\n")
    sys.stdout.flush()


def run(settings: ServeSettings) -> int:
    """Start the model server and the board server, announce them once both answer, stop both on Ctrl-C or
    SIGTERM.

    Raises LaunchError when either does not start.
    """
    starting = True
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal starting, stop_requested
        stop_requested = True
        if starting:  # once: a second Ctrl-C must not break off the clean-up the first one started
            starting = False
            raise _StopWhileStartingError

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started: board.RunningBoard | None = None
    served = None
    renewer: keys.RenewerThread | None = None
    oip_serving = settings.serving == "oip"
    server_log = settings.oip_log_file if oip_serving else settings.log_file
    try:
        if oip_serving:
            served = oip.start(settings)
        else:
            served = torchserve.start(settings)
            renewer = keys.RenewerThread(key_renewer(settings))
            renewer.start()
        started = board.start(settings)
        if started is None:
            logger.warning("board-server not installed; running TorchServe alone")
        starting = False
        announce(settings, started.address if started else None, started.web_url if started else None)
        while not stop_requested:
            if not processes.is_running(served.pid):
                logger.error("the model server exited; see %s", server_log)
                return 1
            if started is not None and not processes.is_running(started.proc.pid):
                processes.stop(started.proc)  # the rest of its group, while the exited leader holds the id
                code, log = started.proc.returncode, settings.board_log_file
                logger.error("board-server exited with %s; see %s", code, log)
                return 1
            time.sleep(0.5)
        return 0
    except _StopWhileStartingError:
        return 0
    finally:
        starting = False
        if started is not None:
            processes.stop(started.proc)
        if renewer is not None:
            renewer.stop()
        if served is not None:
            oip.stop(settings) if oip_serving else torchserve.stop(settings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
