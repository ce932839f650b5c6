"""The customer's page (verifier/web/verify.html) in Chromium: it gives every
vector of tests/vectors/ the CLI's verdict with the same check name, verifies a
proof fetched from a real daemon with the user's id and token (sent to /proof
only), shows the server's refusal of a wrong token, and verifies a proof of 4
assets x height 20 quickly."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from playwright.sync_api import expect

from tests.browser.servers import Daemon
from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, record
from verifier.assetmap import AssetMap
from verifier.hashing import HASHER, MAX_BALANCE
from verifier.proof import AssetPath, ProofFile
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.sumtree import PathStep, root_from_path

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
KEY = (VECTORS / "verifier-key.txt").read_text().strip()
DONE = "() => !['waiting', 'busy'].includes(document.querySelector('#verdict').dataset.state)"
UNAUTHORIZED_LOAD = "the server responded with a status of 401"
VERIFY_BOUND_MS = 500  # generous for a loaded CI machine; the goal is 50 (issue 20)


def open_page(page: Any, url: str) -> Any:
    response = page.goto(url)
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    return response


def verdict(page: Any, action: Any) -> dict[str, str]:
    """Run ``action`` (which starts a verification) and wait for its verdict."""
    page.eval_on_selector("#verdict", "v => { v.dataset.state = 'waiting'; }")
    action()
    page.wait_for_function(DONE)
    shown: dict[str, str] = page.eval_on_selector(
        "#verdict", "v => ({state: v.dataset.state, check: v.dataset.check, text: v.textContent})"
    )
    return shown


def set_options(page: Any, case: dict[str, Any]) -> None:
    page.fill("#key", (VECTORS / case.get("key", "verifier-key.txt")).read_text())
    page.fill("#user", case.get("user", ""))
    page.eval_on_selector("#witness-box", "d => { d.open = true; }")
    witnesses = [(VECTORS / name).read_text() for name in case.get("witnesses", [])]
    page.fill("#witnesses", "\n".join(witnesses))
    page.fill("#quorum", str(case["quorum"]) if "quorum" in case else "")


def verify_file(page: Any, path: Path) -> dict[str, str]:
    return verdict(page, lambda: page.set_input_files("#file", str(path)))


def asset_rows(page: Any) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#assets tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def test_the_page_gives_every_vector_the_clis_verdict(page: Any, daemon: Daemon) -> None:
    page.clock.set_fixed_time(MANIFEST["cosigned"]["now"])  # the vectors' clock (§8)
    response = open_page(page, f"{daemon.url}/verify#key={quote(KEY, safe='')}")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert page.input_value("#key") == KEY  # pinned by the fragment

    page.fill("#user", "alice")
    valid = verify_file(page, VECTORS / MANIFEST["valid"])
    assert valid["state"] == "warning"  # included; ETH is unproven (exit 4 in the CLI)
    assert valid["text"] == "VALID: alice's balances are included in epoch 1"
    assert asset_rows(page) == [
        ["BTC", "1.5", "991.500025", "1000", "solvent"],
        ["ETH", "3", "3.000000007", "1", "unproven"],
    ]
    expect(page.locator("#solvency")).to_have_text(
        "WARNING: not every asset is proven solvent: ETH unproven"
    )
    facts = page.inner_text("#facts")
    assert "2026-09-21T14:13:21Z" in facts and "3 epochs" in facts

    cosigned = MANIFEST["cosigned"]
    set_options(page, cosigned)
    result = verify_file(page, VECTORS / cosigned["file"])
    assert result["state"] == "warning", result
    assert "witness-a.example at" in page.inner_text("#facts")

    for case in MANIFEST["invalid"]:
        set_options(page, case)
        result = verify_file(page, VECTORS / case["file"])
        assert (result["state"], result["check"]) == ("invalid", case["expect"]), case
        assert result["text"].startswith(f"INVALID {case['expect']}: "), result
        assert not page.is_visible("#assets")
    assert page.problems == []


def test_a_proof_fetched_with_id_and_token(page: Any, daemon: Daemon) -> None:
    token = daemon.token("alice")
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))
    open_page(page, f"{daemon.url}/#key={daemon.key}")  # a raw "+" is kept
    page.fill("#user", "alice")
    page.fill("#token", token)
    result = verdict(page, lambda: page.click("#fetch"))
    assert result["state"] in ("valid", "warning"), result
    assert result["text"].startswith("VALID: alice's balances are included in epoch ")
    rows = asset_rows(page)
    assert [row[:2] for row in rows] == [["BTC", "1.5"], ["ETH", "3"]]
    assert "browser.test/solvency" in page.inner_text("#facts")

    # the token went to /proof only, in its header
    sent = [(urlsplit(r.url).path, r.headers.get("authorization")) for r in requests]
    assert [path for path, auth in sent if auth] == ["/proof"]
    assert [auth for _, auth in sent if auth] == [f"Bearer {token}"]
    assert not any(token in r.url for r in requests)

    page.fill("#token", "0" * 64)
    refused = verdict(page, lambda: page.click("#fetch"))
    assert refused["state"] == "error"
    assert "401 unauthorized: wrong or missing token for this user" in refused["text"]
    assert not page.is_visible("#assets")
    # Chromium logs every 4xx answer to fetch() as a console error: that one only
    assert [p for p in page.problems if UNAUTHORIZED_LOAD not in p] == []


def deep_proof(height: int = 20) -> str:
    """A proof of 4 assets of a record of 64, each in a tree ``height`` high, for
    FakeLog's key."""
    rng = random.Random(20)
    user, salt = "alice", bytes(range(32))
    commitment = HASHER.commitment(user, salt)
    log = FakeLog()
    for epoch in range(1000):
        log.append(record(epoch))
    timestamp = 1_790_001_000_000
    paths, states = {}, []
    for asset in ("ADA", "BTC", "ETH", "SOL"):
        balance, slot = rng.randrange(10**9), rng.randrange(1 << height)
        path = tuple(PathStep(rng.randbytes(32), rng.randrange(MAX_BALANCE)) for _ in range(height))
        leaf = HASHER.leaf_hash(asset, commitment, balance)
        root, total = root_from_path(height, slot, leaf, balance, path)
        source = ReserveSource("cold", total + 1, timestamp)
        states.append(
            AssetState(asset, 8, height, root, total, total + 1, Status.SOLVENT, (source,))
        )
        paths[asset] = (slot, balance, path)
    for i in range(60):  # the user holds none of these
        source = ReserveSource("cold", 1, timestamp)
        states.append(AssetState(f"X{i:02d}", 8, 0, bytes(32), 0, 1, Status.SOLVENT, (source,)))
    rec = EpochRecord(1000, timestamp, 60_000, tuple(sorted(states, key=lambda a: a.asset)))
    message = log.append(rec.encode())
    asset_map = AssetMap(HASHER, rec.entries)
    items = []
    for i, state in enumerate(rec.assets):
        if state.asset in paths:
            slot, balance, path = paths[state.asset]
            map_path = tuple(asset_map.path(i))
            items.append(AssetPath(rec.entries[i], i, map_path, slot, balance, path))
    header = rec.header.encode()
    proof = ProofFile(user, salt, header, tuple(items), message.inclusion, message.checkpoint)
    return proof.to_json()


def test_verifying_4_assets_of_height_20(page: Any, daemon: Daemon, tmp_path: Path) -> None:
    proof = deep_proof()
    open_page(page, f"{daemon.url}/verify#key={quote(str(VKEY), safe='')}")
    times = page.evaluate(
        """async ([text, key]) => {
          const { verifyProofFile } = await import("/web/solvency.js");
          const bytes = new TextEncoder().encode(text);
          const times = [];
          for (let i = 0; i < 7; i++) {
            const start = performance.now();
            const result = await verifyProofFile(bytes, { verifierKey: key, user: "alice" });
            times.push(performance.now() - start);
            if (!result.valid) throw new Error(`${result.check}: ${result.reason}`);
          }
          return times;
        }""",
        [proof, str(VKEY)],
    )
    first, median = times[0], statistics.median(times[1:])
    print(f"\n4 assets x height 20 in Chromium: {first:.1f} ms first, {median:.1f} ms median")
    assert first < VERIFY_BOUND_MS and median < VERIFY_BOUND_MS

    file = tmp_path / "deep.json"
    file.write_text(proof)
    result = verify_file(page, file)
    assert result["state"] == "valid", result
    assert [row[0] for row in asset_rows(page)] == ["ADA", "BTC", "ETH", "SOL"]
    assert ORIGIN in page.inner_text("#facts")
    assert page.problems == []
