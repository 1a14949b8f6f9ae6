"""Key renewal wired to a TorchServe of ours: a thread beside `run`, or a detached process beside `start`.

The renewal itself is seg_handler/launcher/keys.py; this room knows where a runtime dir keeps the keys and
whether its TorchServe still runs.
"""

from __future__ import annotations

import logging
import signal
import threading

from seg_handler.launcher import keys
from seg_handler.launcher.settings import ServeSettings
from seg_handler.launcher.torchserve import read_properties, running_pid

logger = logging.getLogger(__name__)


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
    if running_pid(settings) is None:
        logger.error("no TorchServe runs from %s; nothing to renew", settings.runtime_dir)
        return 1
    renewer = key_renewer(settings)
    logger.info("renewing TorchServe's keys in %s (lifetime %s)", settings.runtime_dir, renewer.lifetime)
    renewer.run(stop_event, alive=lambda: running_pid(settings) is not None)
    logger.info("key renewer for %s stops", settings.runtime_dir)
    return 0
