"""The pages hosted on another origin than the prover's (``cors_origins``):
from a listed origin, the customer page fetches and verifies a proof and the
dashboard follows the root stream; from an unlisted one, the prover refuses
both, so a stranger's page cannot spend its subscribers' slots or read proofs."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from playwright.sync_api import expect

from tests.browser.servers import PAGES_ELSEWHERE, Daemon, StaticPages
from tests.browser.test_dashboard import wait_verified
from tests.browser.test_verify_page import open_page, verdict


def proof_served(daemon: Daemon, user: str) -> None:
    """Wait until an epoch holding ``user`` is published (the daemon may be new)."""
    deadline = time.monotonic() + 15
    while True:
        request = urllib.request.Request(
            f"{daemon.url}/proof?user={user}",
            headers={"Authorization": f"Bearer {daemon.token(user)}"},
        )
        try:
            urllib.request.urlopen(request, timeout=5).close()
            return
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline, f"no epoch holds {user}"
            time.sleep(0.2)


def test_pages_of_a_listed_origin_use_the_prover(page: Any, daemon: Daemon) -> None:
    proof_served(daemon, "alice")
    PAGES_ELSEWHERE.connect_to = daemon.url
    with PAGES_ELSEWHERE as pages:
        pinned = f"key={quote(daemon.key, safe='')}&prover={quote(daemon.url, safe='')}"
        open_page(page, f"{pages.url}/verify#{pinned}")
        page.fill("#user", "alice")
        page.fill("#token", daemon.token("alice"))
        result = verdict(page, lambda: page.click("#fetch"))
        assert result["text"].startswith("VALID: alice's balances are included in epoch ")

        page.goto(f"{pages.url}/dashboard#{pinned}")
        wait_verified(page, 2)
        expect(page.locator("#connection")).to_have_text("connected")
    assert page.problems == []


def test_pages_of_an_unlisted_origin_are_refused(page: Any, daemon: Daemon) -> None:
    stranger = StaticPages()
    stranger.connect_to = daemon.url
    with stranger:
        pinned = f"key={quote(daemon.key, safe='')}&prover={quote(daemon.url, safe='')}"
        open_page(page, f"{stranger.url}/verify#{pinned}")
        page.fill("#user", "alice")
        page.fill("#token", daemon.token("alice"))
        result = verdict(page, lambda: page.click("#fetch"))
        assert result["state"] == "error", result  # the browser withheld the answer (CORS)
        assert not page.is_visible("#assets")

        page.goto(f"{stranger.url}/dashboard#{pinned}")
        expect(page.locator("#connection")).not_to_have_text("connected", timeout=3_000)
        assert page.eval_on_selector("#verified", "v => v.dataset.count || '0'") == "0"
    # Chromium reports the refusals on the console: those are the test's point
    refusals = ("CORS policy", "net::ERR_FAILED", "Unexpected response code: 403")
    assert all(any(r in p for r in refusals) for p in page.problems), page.problems
