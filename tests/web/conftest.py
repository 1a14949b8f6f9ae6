"""Browser fixtures: Debian's chromium driven by Playwright (never a downloaded browser), a real board with
its HTTP listener tagging through the session's real TorchServe, and the web app as `make web` built it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from board_server.runtime.config import DEFAULT_WEB_ROOT
from tests.board.conftest import RunningServer
from tests.support import Processes
from tests.torchserve_fixtures import TorchServe, start_tagging_board

# What chromium needs to run headless as root in a container, with a fresh profile (Playwright makes one).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


def chromium_path() -> str:
    found = (
        os.environ.get("BOARD_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not found:
        pytest.fail("chromium not found: `apt-get install chromium` (.ci/run installs it)")
    return found


@pytest.fixture(scope="session")
def web_root() -> Path:
    """The built web app (`make web`; `make test` builds it first)."""
    if not (DEFAULT_WEB_ROOT / "index.html").is_file():
        pytest.fail(f"the web app is not built ({DEFAULT_WEB_ROOT}): run `make web`")
    return DEFAULT_WEB_ROOT


@pytest.fixture(scope="module")
def web_board(
    module_processes: Processes,
    running_torchserve_for_module: TorchServe,
    web_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:
    """A board (auth on, SQLite) tagging through the session TorchServe, serving the web app."""
    workdir = tmp_path_factory.mktemp("web-board")
    server = start_tagging_board(
        module_processes,
        running_torchserve_for_module,
        f"sqlite:///{workdir / 'board.db'}",
        workdir,
        extra=("--web-root", str(web_root)),
    )
    assert server.web_url is not None, server.log()
    return server


@pytest.fixture(scope="module")
def running_torchserve_for_module(torchserve: TorchServe) -> TorchServe:
    """The session TorchServe, started again if an earlier test left it stopped."""
    torchserve.start()
    return torchserve


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


PageFactory = Callable[..., Page]


@pytest.fixture
def new_page(browser: Browser, web_board: RunningServer) -> Iterator[PageFactory]:
    """``new_page(width=1100, height=900)``: a page in a context of its own (its own cookies), at the app,
    whose console errors other than expected HTTP failures fail the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(width: int = 1100, height: int = 900) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=web_board.web_url)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/")
        return page

    yield make
    for context in contexts:
        context.close()
    assert errors == [], f"script errors in the page: {errors}"
