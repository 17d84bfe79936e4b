"""The dashboard's browser tests: Debian's chromium driven by Playwright, never downloaded.

Each test starts its own browser and real cluster and must leave no process behind: the
browser (Playwright's driver and chromium) is closed before the leak check runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import REPO_ROOT, assert_no_leaks, describe_pids

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_BROWSER_DIR = Path(__file__).resolve().parent
#: Screenshots of the pages, kept as test artifacts (git-ignored).
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
_LEAK_DEADLINE_S = 10.0
# Chromium must never reach past loopback (the tests' servers): every other host name
# fails to resolve, and Google's background services are off.
_CHROMIUM_ARGS = (
    "--no-sandbox",  # the tests may run as root, where chromium's sandbox refuses to start
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the dashboard in a real headless chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the browser tests ``browser`` and ``integration`` (they run real processes)."""
    for item in items:
        if _BROWSER_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    baseline = assert_no_leaks()
    yield
    leaked = assert_no_leaks(_LEAK_DEADLINE_S, ignore=baseline)
    assert not leaked, f"browser test left child processes alive:\n{describe_pids(leaked)}"


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless chromium (Debian's package) under Playwright; closed after the test."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not on PATH: run `make install` (scripts/install_system_deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=list(_CHROMIUM_ARGS))
        try:
            yield chromium
        finally:
            chromium.close()
