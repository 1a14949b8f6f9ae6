"""The development launcher: TorchServe with our settings on this machine, and `run`'s board beside it.

Nothing here ships in the model archive (that is seg_handler/handler.py and image_policy.py). Rooms:
settings (where everything listens), processes (start, wait, stop by process group: shared with the tests
and benchmarks), torchserve (config, Java command line, start/ready/stop), keys and renewal, protos, banner
(weights and the cheat sheet), board (the board beside TorchServe), run, and ``__main__`` (the CLI).
The names below are what tests and benchmarks use to run a TorchServe of their own.
"""

from seg_handler.launcher.banner import archive_metadata, describe_endpoints, weights_banner
from seg_handler.launcher.processes import free_port, stop_process
from seg_handler.launcher.renewal import key_renewer, start_renewer
from seg_handler.launcher.settings import (
    LaunchError,
    ServeSettings,
    build_settings,
    isolated_settings,
    with_free_ports,
)
from seg_handler.launcher.torchserve import (
    WORKER_ENV,
    read_keys,
    read_properties,
    render_config,
    start,
    stop,
    wait_ready,
)

__all__ = [
    "WORKER_ENV",
    "LaunchError",
    "ServeSettings",
    "archive_metadata",
    "build_settings",
    "describe_endpoints",
    "free_port",
    "isolated_settings",
    "key_renewer",
    "read_keys",
    "read_properties",
    "render_config",
    "start",
    "start_renewer",
    "stop",
    "stop_process",
    "wait_ready",
    "weights_banner",
    "with_free_ports",
]
