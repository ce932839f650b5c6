"""Both pages as the daemon serves them: the security headers of PROTOCOL
§11.6, everything loaded from the page's own origin, no console error or CSP
violation, and the page weight (every file loaded, uncompressed) within
budget; and screenshots of both with real content (docs/ with
SOLVENCY_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import expect

from prover.demo import page_fragment
from prover.web import SECURITY_HEADERS
from tests.browser.servers import Daemon
from tests.verifier.witnesses import K1, K2

DOCS = Path(__file__).resolve().parents[2] / "docs"
MAX_PAGE_BYTES = 150_000


@pytest.mark.parametrize("path", ["/", "/verify", "/dashboard"])
def test_headers_origin_and_weight(page: Any, daemon: Daemon, path: str) -> None:
    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r))
    main = page.goto(daemon.url + path, wait_until="networkidle")
    for name, value in SECURITY_HEADERS:
        assert main.headers[name.lower()] == value
    loaded = {urlsplit(r.url).path: len(r.body()) for r in responses}
    assert all(urlsplit(r.url).netloc == f"127.0.0.1:{daemon.port}" for r in responses)
    assert all(r.status == 200 for r in responses)
    weight = sum(loaded.values())
    print(f"\n{path}: {len(loaded)} files, {weight:,} bytes")
    assert weight <= MAX_PAGE_BYTES, loaded
    if path == "/dashboard":  # the auditor's modules; no proof file's
        assert "/web/audit.js" in loaded and "/web/selection.js" in loaded
        assert "/web/vendor/uplot-1.6.32.iife.min.js" in loaded
        assert "/web/proof.js" not in loaded
    else:
        assert "/web/solvency.js" in loaded and "/web/proof.js" in loaded
    assert page.problems == []


def test_the_demos_urls_pin_the_keys(page: Any, daemon: Daemon) -> None:
    witnesses = ["--witness", str(K1), "--witness", str(K2), "--quorum", "1"]
    fragment = page_fragment(daemon.key, witnesses)
    page.goto(f"{daemon.url}/verify#{fragment}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert page.input_value("#key") == daemon.key
    assert page.input_value("#witnesses") == f"{K1}\n{K2}"
    assert page.input_value("#quorum") == "1"

    page.goto(f"{daemon.url}/dashboard#{fragment}")
    assert page.input_value("#key") == daemon.key
    expect(page.locator("#witnesses")).to_have_text("2 pinned, quorum 1")
    # this daemon has no witnesses: its checkpoints lack the quorum the page asks for
    alarm = page.locator("#alarm-list li[data-check=witness-quorum]")
    expect(alarm).to_contain_text("0 configured witness(es) cosigned this checkpoint")
    assert page.problems == []


def test_screenshots(page: Any, daemon: Daemon, tmp_path: Path) -> None:
    """The pages with real content from the daemon, saved as docs/*.png when
    SOLVENCY_SCREENSHOTS=1 (else under tmp_path)."""
    out = DOCS if os.environ.get("SOLVENCY_SCREENSHOTS") == "1" else tmp_path
    page.set_viewport_size({"width": 1100, "height": 900})
    key = quote(daemon.key, safe="+/")
    page.goto(f"{daemon.url}/dashboard#key={key}&since=0")  # the log from its start
    for i in range(10):  # figures move while the page watches; the hot wallet falls silent
        daemon.balances(erin={"BTC": 1 + i * 30_000_000}, dave={"ETH": 10**17 * i + 1})
        daemon.reserves("cold", BTC=3_000_000_000 + i * 20_000_000, ETH=4 * 10**18)
        if i < 4:
            daemon.reserves("hot", ETH=10**18 - i * 10**17)
        time.sleep(0.6)
    expect(page.locator("article.asset[data-asset=ETH] .stale")).to_have_text(
        "stale reserve sources: hot"
    )
    cards = page.locator("article.asset")
    for i in range(cards.count()):  # a chart is made once its card is in view
        cards.nth(i).scroll_into_view_if_needed()
    expect(page.locator("article.asset .u-wrap")).to_have_count(2)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / "dashboard.png"), full_page=True)
    assert (out / "dashboard.png").stat().st_size > 10_000

    page.goto(f"{daemon.url}/verify#key={key}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    page.fill("#user", "alice")
    page.fill("#token", daemon.token("alice"))
    page.click("#fetch")
    expect(page.locator("#verdict")).to_contain_text("VALID: alice's balances are included")
    page.screenshot(path=str(out / "verify-page.png"), full_page=True)
    assert (out / "verify-page.png").stat().st_size > 10_000
    assert page.problems == []
