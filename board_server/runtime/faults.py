"""A fault point for tests only: a server process that dies after a call's COMMIT and before its reply.

Armed by the environment variable BOARD_TEST_FAULT (read once by runtime/config.py, never a flag, refused on
a non-loopback address, off by default), so no client can arm it:

    BOARD_TEST_FAULT=exit-after-commit:CreatePost:/tmp/run/fault-fired

The first process (of every process and replica sharing that file) whose CreatePost succeeds creates the
file and exits at once, with status 70, without answering: the write is committed, its caller never hears
so. The file makes it fire once, so the caller's retry, wherever it lands, is answered.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)

EXIT_AFTER_COMMIT = "exit-after-commit"
FAULT_EXIT_STATUS = 70


@dataclass(frozen=True)
class Fault:
    """Exit after the COMMIT of ``method`` (an RPC name), once: whoever creates ``once_file`` first."""

    method: str
    once_file: Path


def parse_fault(text: str) -> Fault:
    """``exit-after-commit:METHOD:FILE``; raise ValueError for anything else."""
    point, _, rest = text.partition(":")
    method, _, once_file = rest.partition(":")
    if point != EXIT_AFTER_COMMIT or not method.isidentifier() or not once_file:
        raise ValueError(
            f"BOARD_TEST_FAULT must be {EXIT_AFTER_COMMIT}:METHOD:FILE (e.g. "
            f"{EXIT_AFTER_COMMIT}:CreatePost:/tmp/fault-fired), got {text[:60]!r}"
        )
    return Fault(method, Path(once_file))


class ExitAfterCommit:
    """A call observer (api/calls.py) that ends the process once ``fault.method`` has succeeded: the
    call guard tells it before the answer is handed to gRPC, so the answer is never sent."""

    def __init__(self, fault: Fault) -> None:
        self._fault = fault
        logger.warning(
            "TEST FAULT ARMED (BOARD_TEST_FAULT): the first successful %s of any process sharing %s exits "
            "before answering",
            fault.method,
            fault.once_file,
        )

    def started(self, service: str, method: str, *, protocol: str = "grpc") -> None:
        pass

    def handled(
        self, service: str, method: str, code: grpc.StatusCode, seconds: float, *, protocol: str = "grpc"
    ) -> None:
        if method != self._fault.method or code != grpc.StatusCode.OK:
            return
        try:
            os.close(os.open(self._fault.once_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return  # fired already, here or in another process
        logger.critical("test fault: exiting after the COMMIT of %s, before its answer", method)
        logging.shutdown()
        os._exit(FAULT_EXIT_STATUS)
