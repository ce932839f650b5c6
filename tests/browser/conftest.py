"""A real browser for the page tests: Debian's chromium, driven by Playwright
(launched with ``executable_path``; no browser is ever downloaded).

Outside CI, the tests skip with the reason when chromium or Playwright is
missing; in CI (``CI=true``, where .ci/run installs chromium) they fail.
The pages come from a real daemon (``daemon``, one per session) or from a
scripted root stream (``stream_server``): see servers.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.servers import PAGES_ELSEWHERE, Daemon, StreamServer, running_daemon

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root, without a sandbox; no background traffic: this machine's network is closed
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# every CSP violation as a console error, beside Chromium's own "Refused to ..." line
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.effectiveDirective} ${e.blockedURI}`));"""


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return "chromium is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


# package scope: Playwright's sync API keeps an event loop running in this
# thread until it stops, and the tests outside this package call asyncio.run
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests need chromium and Playwright in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that records console errors and CSP violations in ``page.problems``."""
    context = browser.new_context()
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.problems = problems
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="package")
def daemon(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One prover for the session's page tests (servers.running_daemon); pages
    served from ``PAGES_ELSEWHERE`` may call it (tests/browser/test_cross_origin.py)."""
    data = tmp_path_factory.mktemp("prover") / "data"
    with running_daemon(data, cors_origins=(PAGES_ELSEWHERE.url,)) as running:
        yield running


@pytest.fixture
def stream_server(browser: Any) -> Iterator[StreamServer]:
    """The pages and a scripted root stream (servers.StreamServer)."""
    with StreamServer() as server:
        yield server
