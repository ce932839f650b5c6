"""The live dashboard (verifier/web/dashboard.html) in Chromium: epochs from a
real daemon verified as they arrive, an asset turning unproven when its
reserve source goes stale, an alarm with downloadable evidence for a forked
log, resuming from the last verified size, signed reports sent once and kept
across frames and connections, chosen assets followed (present, absent, and
the frames that fail to prove them), the auditor's rules (audit.js) one by
one, and 500 assets at a rate above one epoch per second."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import expect

from tests.browser.servers import MAX_RESERVE_AGE, Daemon, StreamServer
from tests.verifier.fakelog import VKEY, FakeLog, many, record
from tests.verifier.witnesses import K1, witnessed
from verifier import rfc9162
from verifier.checkpoint import verifier_key_for
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.stream import EpochMessage

KEY = quote(str(VKEY), safe="")
STATUS_BYTE = 63 + 70  # of fakelog's one asset, BTC: after the header and its fields


def verified(page: Any) -> int:
    return int(page.eval_on_selector("#verified", "v => v.dataset.count || '0'"))


def wait_verified(page: Any, count: int, timeout: float = 15_000) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('#verified').dataset.count) >= {count}",
        timeout=timeout,
    )


def test_live_epochs_and_a_stale_source(page: Any, daemon: Daemon) -> None:
    page.goto(f"{daemon.url}/dashboard#key={quote(daemon.key, safe='')}")
    wait_verified(page, 1)
    first = int(page.inner_text("#epoch"))
    wait_verified(page, 3)
    assert int(page.inner_text("#epoch")) >= first + 2  # epochs arrive, each verified
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#cadence")).to_contain_text(" s (mean ")

    btc = page.locator("article.asset[data-asset=BTC]")
    daemon.reserves("cold", BTC=10**11, ETH=10**19)
    expect(btc.locator(".pill")).to_have_text("solvent", timeout=10_000)
    expect(btc.locator(".figures")).to_have_text("liabilities 26.5 · reserves 1000")
    expect(btc.locator(".pill")).to_have_text("unproven", timeout=(MAX_RESERVE_AGE + 10) * 1000)
    expect(btc.locator(".stale")).to_have_text("stale reserve sources: cold")
    alarm = page.locator("#alarm-list li[data-check=unproven]").filter(has_text="BTC")
    expect(alarm.first).to_contain_text("BTC: stale reserve sources: cold")
    assert btc.locator(".u-wrap").count() == 1  # its chart
    assert page.locator("#alarm-list li.violation").count() == 0
    assert page.problems == []


def test_live_chosen_assets(page: Any, daemon: Daemon) -> None:
    """The daemon's ``/roots?assets=``: BTC proven present, DOGE absent, ETH not followed."""
    page.goto(f"{daemon.url}/dashboard#key={quote(daemon.key, safe='')}&assets=DOGE,BTC")
    wait_verified(page, 2)
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#followed")).to_have_text(
        "BTC, DOGE only: 1 other asset(s) of the record not followed"
    )
    expect(page.locator("article.asset[data-asset=BTC] .figures")).to_contain_text("liabilities ")
    expect(page.locator("article.asset[data-asset=DOGE] .pill")).to_have_text("absent")
    alarm = page.locator("#alarm-list li[data-check=absent]")
    expect(alarm).to_have_count(1)
    expect(alarm).to_contain_text("absent: DOGE: the record has no entry for it")
    assert page.locator("article.asset[data-asset=ETH]").count() == 0
    assert page.locator("#alarm-list li.violation").count() == 0
    assert page.problems == []


def test_a_forked_log_raises_an_alarm_with_evidence(
    page: Any, stream_server: StreamServer, tmp_path: Path
) -> None:
    log, fork = FakeLog(), FakeLog()
    for epoch in range(6):
        log.append()
        fork.append(record(epoch, liabilities=101 if epoch == 2 else 100))
    frames = [m.to_json() for m in log.messages[:5]]
    forked = fork.messages[5].to_json()  # signed by the same key, after another history
    stream_server.frames = [*frames, forked]
    response = page.goto(f"{stream_server.url}/dashboard#key={KEY}")
    assert "connect-src 'self'" in response.headers["content-security-policy"]

    alarm = page.locator("#alarm-list li[data-check=fork]")
    expect(alarm).to_contain_text("fork: its first 5 records are not the log last verified")
    expect(page.locator("#connection")).to_have_text("stopped: fork")
    expect(page.locator("#epoch")).to_have_text("4")  # the last verified one
    with page.expect_download() as download:
        alarm.locator("a").click()
    evidence = json.loads(Path(download.value.path()).read_text())
    assert evidence["check"] == "fork"
    assert evidence["frame"] == forked
    assert evidence["last_verified_checkpoint"] == log.messages[4].checkpoint.decode()
    assert "reports" not in evidence  # of a frame that did not verify
    assert page.problems == []


def test_it_resumes_from_the_last_verified_size(page: Any, stream_server: StreamServer) -> None:
    log = FakeLog()
    for epoch in range(6):  # BTC short of reserves in epoch 4
        log.append(record(epoch, liabilities=200 if epoch == 4 else 100))
    stream_server.frames = [m.to_json() for m in log.messages]
    stream_server.drop_after = 3
    page.goto(f"{stream_server.url}/dashboard#key={KEY}")
    expect(page.locator("#epoch")).to_have_text("5", timeout=10_000)
    assert stream_server.subscriptions == [None, 3]
    assert verified(page) == 6
    alarms = page.locator("#alarm-list li")
    expect(alarms).to_have_count(1)  # raised when BTC turned insolvent, not again
    expect(alarms).to_contain_text("insolvent: BTC: reserves 0.0000015 < liabilities 0.000002")
    expect(page.locator("article.asset[data-asset=BTC] .pill")).to_have_text("solvent")
    assert page.problems == []


COLD = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))


def attested(epoch: int, note: bytes, liabilities: int = 100) -> bytes:
    """A record of BTC whose source ``cold`` binds the signed report ``note``."""
    signed = SignedReport.parse(note)
    r = signed.report
    source = ReserveSource("cold", r.amount, r.as_of_ms, signed.key_id, signed.hash)
    status = Status.SOLVENT if r.amount >= liabilities else Status.INSOLVENT
    btc = AssetState("BTC", 8, 4, bytes(32), liabilities, r.amount, status, (source,))
    return EpochRecord(epoch, 1_790_000_000_000 + epoch * 1000, 60_000, (btc,)).encode()


def test_reports_sent_once_are_kept_as_evidence(page: Any, stream_server: StreamServer) -> None:
    """Each frame carries only the reports new since the previous epoch; the page
    keeps those the last record binds, across a reconnection (whose first frame
    carries them all), and gives them with a finding's evidence."""
    as_of = 1_790_000_000_000 - 500
    notes = [sign_report(ReserveReport("cold", "BTC", 150, as_of + e * 1000), COLD) for e in (0, 3)]
    log = FakeLog()
    for e in range(6):  # notes[0] bound by epochs 0-2, notes[1] by 3-5; 4 insolvent
        note = notes[e >= 3]
        log.append(attested(e, note, 200 if e == 4 else 100), (note,))
    stream_server.frames = [  # a report is sent when it is new: in epochs 0 and 3
        (m if e in (0, 3) else dataclasses.replace(m, reports=())).to_json()
        for e, m in enumerate(log.messages)
    ]
    stream_server.opening = {2: log.messages[2].to_json()}  # every report, on reconnecting
    stream_server.drop_after = 2
    page.goto(f"{stream_server.url}/dashboard#key={KEY}")
    expect(page.locator("#epoch")).to_have_text("5", timeout=10_000)
    assert stream_server.subscriptions == [None, 2]
    alarm = page.locator("#alarm-list li[data-check=insolvent]")
    expect(alarm).to_have_count(1)
    with page.expect_download() as download:
        alarm.locator("a").click()
    evidence = json.loads(Path(download.value.path()).read_text())
    assert json.loads(evidence["frame"])["reports"] == []  # epoch 4's frame: none new
    assert evidence["reports"] == [notes[1].decode()]  # kept from epoch 3's
    assert page.problems == []


def test_a_missing_quorum_alarms_once(page: Any, stream_server: StreamServer) -> None:
    log = FakeLog()
    for _ in range(5):
        log.append()
    frames = [m if i == 2 else witnessed(m, K1.name) for i, m in enumerate(log.messages)]
    stream_server.frames = [m.to_json() for m in frames]  # epoch 2 lacks the cosignature
    page.goto(f"{stream_server.url}/dashboard#key={KEY}&witness={quote(str(K1))}&quorum=1")
    expect(page.locator("#epoch")).to_have_text("4")  # the chain of custody goes on
    expect(page.locator("#witnesses")).to_have_text("1 pinned, quorum 1")
    alarms = page.locator("#alarm-list li")
    expect(alarms).to_have_count(1)
    expect(alarms).to_contain_text("epoch 2 witness-quorum: 0 configured witness(es)")
    expect(page.locator("#connection")).to_have_text("connected")
    assert page.problems == []


def test_chosen_assets_present_and_absent(page: Any, stream_server: StreamServer) -> None:
    log = FakeLog()
    for epoch in range(5):  # BTC short of reserves in epoch 2
        overrides = {"BTC": {"liabilities": 200}} if epoch == 2 else {}
        log.append(many(epoch, ("ADA", "BTC", "ETH", "SOL"), **overrides))
    stream_server.frames = [log.assets_frame(e, ("BTC", "CAT")).to_json() for e in range(5)]
    stream_server.drop_after = 3
    page.goto(f"{stream_server.url}/dashboard#key={KEY}&assets=CAT,BTC")
    expect(page.locator("#epoch")).to_have_text("4", timeout=10_000)
    assert stream_server.queries == ["assets=BTC,CAT", "since=3&assets=BTC,CAT"]
    assert verified(page) == 5
    expect(page.locator("#followed")).to_have_text(
        "BTC, CAT only: 3 other asset(s) of the record not followed"
    )
    expect(page.locator("#solvent")).to_have_text("1 of 1 followed assets")
    btc, cat = (page.locator(f"article.asset[data-asset={a}]") for a in ("BTC", "CAT"))
    expect(btc.locator(".pill")).to_have_text("solvent")
    expect(btc.locator(".figures")).to_have_text("liabilities 0.000001 · reserves 0.0000015")
    expect(cat.locator(".pill")).to_have_text("absent")
    expect(cat.locator(".figures")).to_have_text("not in this epoch's record")
    assert page.locator("article.asset").count() == 2  # ADA, ETH, SOL: not followed
    absent = page.locator("#alarm-list li[data-check=absent]")
    expect(absent).to_have_count(1)  # raised once, while CAT stays absent
    expect(absent).to_contain_text("epoch 0 absent: CAT: the record has no entry for it")
    insolvent = page.locator("#alarm-list li[data-check=insolvent]")
    expect(insolvent).to_contain_text("BTC: reserves 0.0000015 < liabilities 0.000002")
    assert page.locator("#alarm-list li.violation").count() == 0
    assert page.problems == []


def test_chosen_assets_not_proven(page: Any, stream_server: StreamServer) -> None:
    log = FakeLog()
    for epoch in range(3):
        log.append(many(epoch, ("ADA", "BTC", "ETH")))
    frames = [log.assets_frame(e, ("BTC", "CAT")).to_json() for e in range(3)]
    incomplete = json.loads(frames[1])
    del incomplete["entries"][-1]  # ETH's entry, which shows that CAT sorts before it
    cases = {
        "asset-map-incomplete": json.dumps(incomplete),
        "format": log.messages[1].to_json(),  # a whole record: CAT would go unchecked
    }
    for check, frame in cases.items():
        stream_server.frames = [frames[0], frame, frames[2]]
        page.goto("about:blank")
        page.goto(f"{stream_server.url}/dashboard#key={KEY}&assets=BTC,CAT")
        alarm = page.locator(f"#alarm-list li.violation[data-check={check}]")
        expect(alarm).to_have_count(1)
        expect(page.locator("#connection")).to_have_text(f"stopped: {check}")
        expect(page.locator("#epoch")).to_have_text("0")  # the last verified one
        with page.expect_download() as download:
            alarm.locator("a").click()
        assert json.loads(Path(download.value.path()).read_text())["frame"] == frame

    page.goto(f"{stream_server.url}/dashboard#key={KEY}&assets=BTC,btc")
    expect(page.locator("#connection")).to_contain_text("cannot watch: assets: invalid asset id")
    assert page.problems == []


def _message(log: FakeLog, data: bytes, epoch: int, size: int) -> str:
    """A frame of ``log`` whose record is ``data`` at ``epoch``, for a log of ``size``."""
    return EpochMessage(
        record=data,
        checkpoint=log.checkpoint(size),
        inclusion=tuple(rfc9162.inclusion_proof(log.hashes, epoch, size)),
    ).to_json()


def test_the_auditors_rules_in_the_browser(page: Any, stream_server: StreamServer) -> None:
    log, other, late, wide = FakeLog(), FakeLog(), FakeLog(), FakeLog()
    for epoch in range(4):
        log.append()
        other.append(record(epoch, liabilities=99 if epoch == 1 else 100))
        wide.append(many(epoch, ("ADA", "BTC", "ETH")))
    late.append(record(0, timestamp=1_790_000_005_000))
    late.append(record(1, timestamp=1_790_000_004_000))
    a = [m.to_json() for m in log.messages]
    lying = bytearray(record(0))
    lying[STATUS_BYTE] = Status.INSOLVENT  # reserves 150 >= liabilities 100: it is SOLVENT
    chosen = [wide.assets_frame(e, ("BTC", "CAT")).to_json() for e in range(4)]
    moved = json.loads(chosen[1])
    moved["entries"][0]["index"] = 0  # BTC's entry is at 1
    every, some, bare = None, ["BTC", "CAT"], "checkpoints"
    cases = {
        "chain": (a, every),
        "replayed": ([a[0], a[1], a[1]], every),
        "gap": ([a[0], a[2]], every),
        "same-size": ([a[0], a[1], other.messages[1].to_json()], every),
        "split-view": ([a[0], a[1], a[2], other.messages[3].to_json()], every),
        "time": ([m.to_json() for m in late.messages], every),
        "not-newest": ([a[0], _message(log, log.messages[0].record, 0, 2)], every),
        "status": ([FakeLog().append(bytes(lying)).to_json()], every),
        "stale": ([FakeLog().append(record(0, stale=True)).to_json()], every),
        "other-key": ([FakeLog(origin="other.example/log").append().to_json()], every),
        "chosen": (chosen, some),
        "chosen-moved": ([chosen[0], json.dumps(moved)], some),
        "chosen-but-all": ([chosen[0]], every),
        "checkpoints": ([wide.checkpoint_frame(e).to_json() for e in range(4)], bare),
        "checkpoints-but-a-record": ([a[0]], bare),
    }
    page.goto(f"{stream_server.url}/dashboard")
    outcome = page.evaluate(
        """async ([key, cases]) => {
          const { checkEpoch } = await import("/web/audit.js");
          const { loadVerifierKey, parseMessage } = await import("/web/solvency.js");
          const pinned = await loadVerifierKey(key);
          const out = {};
          for (const [name, [frames, asked]] of Object.entries(cases)) {
            const subscription = {
              assets: Array.isArray(asked) ? asked : null, checkpoints: asked === "checkpoints",
            };
            let state = null, findings = [];
            try {
              for (const frame of frames) {
                ({ state, findings } = await checkEpoch(
                  state, parseMessage(frame), pinned, { subscription }));
              }
              const found = findings.map((f) => `${f.status} ${f.asset}: ${f.detail}`);
              out[name] = ["ok", String(state.size), found];
            } catch (error) {
              out[name] = [error.check ?? error.name, error.message];
            }
          }
          return out;
        }""",
        [str(VKEY), cases],
    )
    assert outcome["chain"] == ["ok", "4", []]
    assert outcome["replayed"][0] == "replayed-checkpoint"
    assert outcome["gap"] == ["epoch-gap", "epoch-gap: epochs 1 to 1 were skipped"]
    assert outcome["same-size"][0] == "fork"
    assert outcome["split-view"][0] == "fork"
    assert outcome["time"][0] == "time-went-back"
    assert outcome["not-newest"][0] == "epoch-size-mismatch"
    assert outcome["status"] == ["FormatError", "BTC: status INSOLVENT contradicts SOLVENT"]
    assert outcome["stale"] == ["ok", "1", ["unproven BTC: stale reserve sources: cold"]]
    assert outcome["other-key"][0] == "unknown-key"
    assert outcome["chosen"] == ["ok", "4", ["absent CAT: the record has no entry for it"]]
    assert outcome["chosen-moved"][0] == "asset-map-mismatch"
    assert outcome["chosen-but-all"][0] == "FormatError"
    assert outcome["checkpoints"] == ["ok", "4", []]
    assert outcome["checkpoints-but-a-record"][0] == "FormatError"
    assert page.problems == []


def test_a_wrong_key_is_no_alarm(page: Any, stream_server: StreamServer) -> None:
    other = FakeLog(origin="other.example/log")
    stream_server.frames = [other.append().to_json(), other.append().to_json()]
    page.goto(f"{stream_server.url}/dashboard#key={KEY}")
    expect(page.locator("#connection")).to_contain_text("not this log's key: unknown-key")
    assert page.locator("#alarm-list li").count() == 0
    assert stream_server.subscriptions == [None]  # it does not retry a wrong key

    page.fill("#key", str(verifier_key_for(other.origin, other.key.public_key())))
    page.click("#connect")
    expect(page.locator("#epoch")).to_have_text("1")
    expect(page.locator("#connection")).to_have_text("connected")
    assert page.problems == []


def wide_record(epoch: int, assets: int = 500) -> bytes:
    timestamp = 1_790_000_000_000 + epoch * 1000
    states = []
    for i in range(assets):
        liabilities = 10**12 + epoch * 1000 + i
        reserves = liabilities + (epoch * 7919 + i) % 10**6
        source = ReserveSource("cold", reserves, timestamp - 500)
        root = (epoch * 1000 + i).to_bytes(32, "big")
        states.append(
            AssetState(f"A{i:03d}", 8, 20, root, liabilities, reserves, Status.SOLVENT, (source,))
        )
    return EpochRecord(epoch, timestamp, 60_000, tuple(states)).encode()


def test_500_assets_faster_than_one_epoch_per_second(
    page: Any, stream_server: StreamServer
) -> None:
    log = FakeLog()
    epochs = 20
    stream_server.frames = [log.append(wide_record(epoch)).to_json() for epoch in range(epochs)]
    size = len(stream_server.frames[-1])
    began = time.monotonic()
    page.goto(f"{stream_server.url}/dashboard#key={KEY}")
    wait_verified(page, epochs, timeout=60_000)
    page.wait_for_function("() => new Promise((done) => requestAnimationFrame(() => done(true)))")
    elapsed = time.monotonic() - began
    stats = page.eval_on_selector("#verified", "v => ({...v.dataset})")
    mean, worst, drawn = (float(stats[k]) for k in ("meanMs", "maxMs", "drawMs"))
    print(
        f"\n500 assets ({size // 1024} KiB a frame): {epochs} epochs in {elapsed:.1f} s, "
        f"verified in {mean:.1f} ms on average, {worst:.1f} ms at most; drawn in {drawn:.1f} ms"
    )
    assert elapsed < epochs  # it keeps ahead of one epoch per second
    assert mean + drawn < 250
    expect(page.locator("#solvent")).to_have_text("500 of 500 assets")
    charts = page.locator(".u-wrap").count()
    assert 1 <= charts < 50  # only the charts in view are made
    expect(page.locator("article.asset[data-asset=A499] .figures")).to_contain_text("10000.00")
    assert page.problems == []
