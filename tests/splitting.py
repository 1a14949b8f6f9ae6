"""How the suite is split: integration tests and `--unit`, and the work groups of parallel runs (a plugin of
tests/conftest.py; docs/testing.md).

A test that starts something (a subprocess, a board server, TorchServe, PostgreSQL, an in-process gRPC or
HTTP server) is marked ``integration``: here when it uses a fixture that starts one, by hand otherwise.
``--unit`` runs the others, less the ``slow`` ones, and fails any of them that starts something after all.

Under pytest-xdist (`make test`: ``-n N --dist loadgroup``) the tests of one place's model servers
(TorchServe, OIP) form one work group, and so do the tests of a module with module-scoped fixtures: a group
runs on one worker, which starts its servers once. The other tests are handed out one by one, after the
groups; whatever holds a ``slow`` test goes first. xdist 3.8's own loadgroup no longer groups on pytest 9.2
(it renames node ids, which pytest now ignores), so the workers write each test's group to a file and the
scheduler reads it.
"""

from __future__ import annotations

import json
import multiprocessing.process
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, NoReturn

import grpc
import grpc.aio
import pytest
from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

# Fixtures that start processes or servers: a test using one (directly or through another fixture) is an
# integration test.
STARTING_FIXTURES = frozenset(
    {
        "processes",
        "module_processes",
        "session_processes",
        "postgres_cluster",
        "backend",
        "board_server",
        "torchserve",
        "running_torchserve",
        "oip_server",
        "e2e_model_store",
        "model_store",
        "exported",  # tests/training/test_export.py: training.export runs torch-model-archiver
        "web_board",
        "browser",
    }
)
# Session fixtures that start a model server (TorchServe, the OIP server): the users of those defined in one
# place (tests/torchserve_fixtures.py, tests/serving/conftest.py) form one group; its worker starts them once.
MODEL_SERVER_FIXTURES = ("torchserve", "oip_server")
# Modules that start TorchServes with the launcher's default worker socket (/tmp/.ts.sock.9000): two such
# TorchServes starting at once may connect to each other's Python worker, so these run one at a time.
DEFAULT_WORKER_SOCKET = frozenset({"tests/docs/test_tour.py", "tests/serving/test_launch_run.py"})
GROUPS_FOLDER = "work_groups"  # the workerinput key: where workers write the groups
GROUPS_FOLDER_KEY = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--unit",
        action="store_true",
        help="only the tests that start nothing and are not slow; starting a process or server fails them",
    )


def _group_of(item: pytest.Function) -> str | None:
    """The work group of ``item``: its xdist_group mark's, its model servers', or its module's when it uses
    module-scoped fixtures; None: a unit of its own."""
    if (marker := item.get_closest_marker("xdist_group")) is not None:
        return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))
    module = item.nodeid.split("::", 1)[0]
    if module in DEFAULT_WORKER_SOCKET:
        return "torchserve-default-worker-socket"
    definitions = item._fixtureinfo.name2fixturedefs
    for name in MODEL_SERVER_FIXTURES:
        if name in definitions:
            return f"model-servers:{definitions[name][-1].baseid or 'tests'}"
    if any(d.scope in ("module", "class", "package") for defs in definitions.values() for d in defs):
        return module
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and STARTING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
    if config.getoption("unit"):
        left_out = [i for i in items if i.get_closest_marker("integration") or i.get_closest_marker("slow")]
        config.hook.pytest_deselected(items=left_out)
        items[:] = [i for i in items if i not in left_out]


# After pytest's own reordering (the fixture manager groups the tests of each parameter of a session fixture,
# ``backend``, together): run before it, the slow-first order lost to it, and a slow test on the sqlite
# backend took every sqlite test of the suite ahead of the model servers' groups with it.
@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_hand_out(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and GROUPS_FOLDER in workerinput:
        groups = {
            i.nodeid: group
            for i in items
            if isinstance(i, pytest.Function) and (group := _group_of(i)) is not None
        }
        # The scheduler hands work out in the order the workers collected it.
        items[:] = _slow_first(items, groups)
        _write_groups(Path(workerinput[GROUPS_FOLDER]) / f"{workerinput['workerid']}.json", groups)


def _slow_first(items: list[pytest.Item], groups: dict[str, str]) -> list[pytest.Item]:
    """``items`` with the work units (a group, or a single test) that hold a ``slow`` test first, groups
    before single tests, otherwise in collection order: long units start at once instead of ending the run."""

    def unit(item: pytest.Item) -> str:
        return f"group:{groups[item.nodeid]}" if item.nodeid in groups else item.nodeid

    slow = {unit(i) for i in items if i.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[bool, bool]:
        return unit(item) not in slow, item.nodeid not in groups

    return sorted(items, key=rank)


def _write_groups(path: Path, groups: dict[str, str]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(groups))
    partial.replace(path)


# --- the controller's side ---------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None and config.getoption("dist", "no") == "loadgroup":
        folder = Path(tempfile.mkdtemp(prefix="pytest-work-groups-"))
        config.stash[GROUPS_FOLDER_KEY] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def pytest_configure_node(node: Any) -> None:
    """Tell each xdist worker where to write the groups (xdist's hook, on the controller)."""
    node.workerinput[GROUPS_FOLDER] = str(node.config.stash[GROUPS_FOLDER_KEY])


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load-scope scheduler, whose work units are the groups the workers wrote."""
    if GROUPS_FOLDER_KEY not in config.stash:
        return None
    folder = config.stash[GROUPS_FOLDER_KEY]
    groups: dict[str, str] = {}

    def unit_of(nodeid: str) -> str:
        # First asked once every worker has collected, so once each has written its file.
        if not groups:
            for path in sorted(folder.glob("*.json")):
                groups.update(json.loads(path.read_text()))
        return f"group:{groups[nodeid]}" if nodeid in groups else nodeid

    scheduler = LoadScopeScheduling(config, log)
    scheduler._split_scope = unit_of
    return scheduler


# --- --unit: nothing may start -----------------------------------------------------------------------------


class StartedSomethingError(RuntimeError):
    """A test selected by --unit started a process or a server."""


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise StartedSomethingError(
            f"a --unit test started {what}: mark it @pytest.mark.integration (or use a fixture that does)"
        )

    return refuse


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """With --unit, while tests run (imports during collection may start what they like: torch runs
    ldconfig), starting a process or a server raises."""
    if not session.config.getoption("unit"):
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess"))
        patch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("a process"))
        patch.setattr(os, "fork", _refuse("a process (fork)"))
        patch.setattr(grpc, "server", _refuse("a gRPC server"))
        patch.setattr(grpc.aio, "server", _refuse("a gRPC server"))
        patch.setattr(socket.socket, "listen", _refuse("a server (listen)"))
        return (yield)
