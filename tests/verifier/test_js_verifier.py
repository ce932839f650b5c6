"""The browser verifier (verifier/web/, JavaScript) is held to the Python verifier's
contract: its own suite under Node (tests/js/: every vector of tests/vectors/, valid
and invalid, with the same check names), and the same answers as the Python
verifier to a few hundred mutated proof files, records, headers, asset entries,
root stream frames (chosen assets' entries, indices and map paths; logs forked
before the last verified size; signed reports sent once, then kept across
frames) and user ids made here."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, asset, many
from verifier.assetmap import map_root
from verifier.audit import AuditState, check_epoch
from verifier.auditor import Auditor, AuditorConfig, Verified
from verifier.checkpoint import VerifierKey
from verifier.cosignature import WitnessKey
from verifier.errors import FormatError, VerificationError
from verifier.hashing import HASHER, check_user_id
from verifier.proof import ProofFile, verify_proof
from verifier.record import (
    HEADER_SIZE,
    AssetState,
    EpochRecord,
    RecordHeader,
    ReserveSource,
    decode_entry,
)
from verifier.report import ReserveReport, SignedReport, report_hash, sign_report
from verifier.stream import parse_message
from verifier.subscription import Subscription

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "js"
VECTORS = ROOT / "tests" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
NODE = shutil.which("node")

if NODE is None and os.environ.get("CI") != "true":
    pytest.skip(
        "needs Node.js (node) to run the browser verifier's tests; CI requires it",
        allow_module_level=True,
    )


def node(*args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None, "CI=true: Node.js (node) must be installed to test verifier/web/"
    return subprocess.run(
        [NODE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_node_suite_passes() -> None:
    """``node --test tests/js/``, the files named one by one (a directory argument
    is read as a glob by Node 22)."""
    files = sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("*.test.mjs"))
    assert len(files) >= 3
    done = node("--test", *files)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout


def answers(cases: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    request = tmp_path / "cases.json"
    request.write_text(json.dumps(cases))
    done = node(str(TESTS / "differential.mjs"), str(request))
    assert done.returncode == 0, done.stderr[-4000:]
    result: list[str] = json.loads(done.stdout)
    return result


def python_answer(data: bytes, case: dict[str, Any]) -> str:
    """The Python verifier's answer to ``data`` under a manifest ``case``'s options."""
    key = VerifierKey.parse((VECTORS / case.get("key", "verifier-key.txt")).read_text().strip())
    witnesses = [
        WitnessKey.parse(line)
        for name in case.get("witnesses", ())
        for line in (VECTORS / name).read_text().splitlines()
    ]
    try:
        verify_proof(
            ProofFile.parse(data),
            key,
            user=case.get("user"),
            witnesses=witnesses,
            quorum=case.get("quorum", 0),
            now=case.get("now"),
        )
    except VerificationError as exc:
        return exc.check
    except FormatError:
        return "format"
    return "valid"


def js_options(case: dict[str, Any]) -> dict[str, Any]:
    return {
        "verifierKey": (VECTORS / case.get("key", "verifier-key.txt")).read_text(),
        "user": case.get("user"),
        "witnessKeys": [(VECTORS / name).read_text() for name in case.get("witnesses", ())],
        "quorum": case.get("quorum", 0),
        "now": case.get("now"),
    }


def flip(text: str, rng: random.Random) -> str:
    """Base64 ``text`` with one bit of its bytes flipped, re-encoded (canonical)."""
    raw = bytearray(base64.b64decode(text))
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return base64.b64encode(raw).decode()


def mutated_asset(doc: dict[str, Any], rng: random.Random) -> None:
    """One change to an item of a proof's ``assets``: its entry's bytes, its index,
    its map path, or the list itself."""
    assets = doc["assets"]
    item = rng.choice(assets)
    kind = rng.randrange(8)
    if kind == 0:
        item["entry"] = flip(item["entry"], rng)
    elif kind == 1:
        item["index"] = rng.choice([0, 1, 2, item["index"] + 1, 2**64, 10**20 - 1])
    elif kind == 2 and item["map_path"]:
        item["map_path"][rng.randrange(len(item["map_path"]))] = rng.randbytes(32).hex()
    elif kind == 3:
        item["map_path"] = item["map_path"][1:] if rng.random() < 0.5 else item["map_path"] * 2
    elif kind == 4:
        other = rng.choice(assets)
        item["entry"], item["map_path"] = other["entry"], other["map_path"]
    elif kind == 5:
        assets.append(dict(item))
    elif kind == 6:
        assets.reverse()
    else:
        doc["header"] = flip(doc["header"], rng)


def mutated(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one random change: a byte replaced, dropped, doubled or
    inserted; a character of a string replaced; or a change to an asset's entry,
    index or map path, or to the header (re-encoded: the base64 stays canonical)."""
    kind = rng.randrange(7)
    at = rng.randrange(len(data))
    byte = bytes([rng.choice(b'0159aefAZ+/="\\{}[],: -\x00\x0a\x7f\x80\xc3\xe2\xef\xff')])
    if kind == 0:
        return data[:at] + byte + data[at + 1 :]
    if kind == 1:
        return data[:at] + data[at + 1 :]
    if kind == 2:
        return data[:at] + data[at : at + rng.randrange(1, 8)] + data[at:]
    if kind == 3:
        return data[:at] + byte + data[at:]
    doc = json.loads(data)
    if kind == 4:
        field = rng.choice(["checkpoint", "salt", "user"])
        value = doc[field]
        i = rng.randrange(len(value))
        doc[field] = value[:i] + rng.choice("0a/\n+=\u2014 \u00e9\ud800\u200b") + value[i + 1 :]
    else:
        mutated_asset(doc, rng)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=rng.random() < 0.5).encode(
        "utf-8", "surrogatepass"
    )


def test_mutated_proofs_fail_alike(tmp_path: Path) -> None:
    rng = random.Random(20)
    bases = [({"file": MANIFEST["valid"], "user": "alice"}), MANIFEST["cosigned"]]
    cases, expected = [], []
    for i in range(600):
        case = bases[i % 2]
        data = mutated((VECTORS / case["file"]).read_bytes(), rng)
        cases.append(
            {"kind": "proof", "data": base64.b64encode(data).decode(), "options": js_options(case)}
        )
        expected.append(python_answer(data, case))
    got = answers(cases, tmp_path)
    differ = [(i, e, g) for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g]
    assert not differ, differ[:10]
    assert len(set(expected)) >= 8  # the mutations reach many checks, not only "format"
    assert expected.count("asset-map-mismatch") >= 20


def header_fields(h: RecordHeader) -> str:
    return (
        f"{h.version}/{h.epoch}/{h.timestamp_ms}/{h.max_reserve_age_ms}/{h.asset_count}/"
        f"{h.asset_map_root.hex()}"
    )


def asset_fields(a: AssetState) -> str:
    """An asset entry as tests/js/differential.mjs writes it."""
    sources = "|".join(
        f"{s.name}:{s.amount}:{s.as_of_ms}:{s.key_id}:{s.report_hash.hex()}" for s in a.sources
    )
    return (
        f"{a.asset},{a.decimals},{a.height},{a.root.hex()},{a.liabilities},{a.reserves},"
        f"{a.status.name},{sources}"
    )


def decoded(kind: str, *hexes: str) -> str:
    """The Python verifier's answer to a ``record``, ``header`` or ``entry`` case."""
    try:
        if kind == "record":
            record = EpochRecord.decode(bytes.fromhex(hexes[0]))
            assets = ";".join(asset_fields(a) for a in record.assets)
            return f"ok {header_fields(record.header)}/{assets}"
        if kind == "header":
            return f"ok {header_fields(RecordHeader.decode(bytes.fromhex(hexes[0])))}"
        header = RecordHeader.decode(bytes.fromhex(hexes[0]))
        return f"ok {asset_fields(decode_entry(bytes.fromhex(hexes[1]), header))}"
    except FormatError:
        return "format"


def changed(raw: bytes, rng: random.Random) -> bytes:
    """``raw`` with a byte or two replaced by values that matter to a record, or
    truncated, or lengthened."""
    out = bytearray(raw)
    for _ in range(rng.choice((1, 1, 2))):
        out[rng.randrange(len(out))] = rng.choice((0, 1, 2, 3, 0x20, 0x2D, 0x41, 0x7F, 0xFF))
    if rng.random() < 0.1:
        out = out[: rng.randrange(len(out))] if rng.random() < 0.5 else out + b"\x00"
    return bytes(out)


def test_mutated_records_headers_and_entries_decode_alike(tmp_path: Path) -> None:
    """Full records whose entries change with the header's map root made to match
    (so that the entries' own rules are reached), headers, and entries read with a
    header, each changed in a byte or two."""
    rng = random.Random(21)
    vector = json.loads((VECTORS / "record.json").read_text())
    header = bytes.fromhex(vector["header"])
    entries = [bytes.fromhex(e) for e in vector["entries"]]
    cases: list[dict[str, Any]] = []
    for _ in range(500):
        kind = rng.choice(("record", "record", "header", "entry", "entry"))
        if kind == "header":
            cases.append({"kind": kind, "hex": changed(header, rng).hex()})
        elif kind == "entry":
            head = changed(header, rng) if rng.random() < 0.2 else header
            cases.append(
                {
                    "kind": kind,
                    "header": head.hex(),
                    "entry": changed(rng.choice(entries), rng).hex(),
                }
            )
        elif rng.random() < 0.2:  # the header changed, its entries not
            cases.append({"kind": kind, "hex": (changed(header, rng) + b"".join(entries)).hex()})
        else:
            new = list(entries)
            i = rng.randrange(len(new))
            new[i] = changed(new[i], rng)
            root = map_root(HASHER, new)
            head = header[: HEADER_SIZE - 32] + root
            cases.append({"kind": kind, "hex": (head + b"".join(new)).hex()})
    expected = [
        decoded(c["kind"], c["hex"]) if "hex" in c else decoded("entry", c["header"], c["entry"])
        for c in cases
    ]
    got = answers(cases, tmp_path)
    differ = [
        (cases[i], e, g) for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g
    ]
    assert not differ, differ[:5]
    for kind in ("record", "header", "entry"):
        answered = [e for c, e in zip(cases, expected, strict=True) if c["kind"] == kind]
        assert 10 < sum(e != "format" for e in answered) < len(answered) - 10, kind


ASSETS = ("ADA", "BTC", "DOGE", "ETH", "SOL", "XRP")
CHOICES = (("BTC",), ("CAT",), ("AAA", "ZZZ"), ("BTC", "CAT", "ETH"), ("SOL", "TRX", "XRP"))


def held_reports(frames: list[str], subscription: Subscription) -> str:
    """The signed reports the auditor holds after ``frames`` (each verified):
    those the last record binds, by hash, in record order."""
    config = AuditorConfig(VKEY, ORIGIN, keep_going=True, subscription=subscription)
    auditor = Auditor(config, None, 0.0)
    verified = [d for f in frames for d in auditor.on_frame(f, 0.0) if isinstance(d, Verified)]
    assert len(verified) == len(frames)
    return ",".join(report_hash(r).hex() for r in verified[-1].reports)


def python_frames(frames: list[str], assets: list[str] | None, checkpoints: bool) -> str:
    """The Python auditor's answer to a ``frames`` case (differential.mjs)."""
    subscription = Subscription(None if assets is None else frozenset(assets), checkpoints)
    state: AuditState | None = None
    try:
        for frame in frames:
            audit = check_epoch(
                state, parse_message(frame), VKEY, ORIGIN, subscription=subscription
            )
            state = audit.state
    except VerificationError as exc:
        return exc.check
    except FormatError:
        return "format"
    assert state is not None
    record = audit.record
    ids = "-" if record is None else ",".join(a.asset for a in record.assets)
    absent = ",".join(getattr(record, "absent", ()))
    findings = ",".join(f"{f.asset}:{f.status}" for f in audit.findings)
    held = held_reports(frames, subscription)
    return f"ok {audit.epoch}/{state.timestamp_ms}/{ids}/{absent}/{findings}/{held}"


def mutated_frame(doc: dict[str, Any], rng: random.Random, full: dict[str, Any]) -> None:
    """One change to an epoch-assets frame: its entries list, an entry's index,
    bytes or map path, or its header; ``full``: the same epoch's entries, all of
    them with their map paths, for entries that are valid but not asked for."""
    entries = doc["entries"]
    kind = rng.randrange(9)
    if kind == 0 and entries:
        del entries[rng.randrange(len(entries))]
    elif kind == 1 and entries:
        entries.insert(rng.randrange(len(entries) + 1), dict(rng.choice(entries)))
    elif kind == 2:
        extra = rng.choice(full["entries"])
        if all(e["index"] != extra["index"] for e in entries):
            entries.append(extra)
            entries.sort(key=lambda e: e["index"])
    elif kind == 3 and entries:
        e = rng.choice(entries)
        e["index"] = rng.choice([e["index"] - 1, e["index"] + 1, len(ASSETS), 2**64, 0])
    elif kind == 4 and entries:
        e = rng.choice(entries)
        path = e["map_path"]
        how = rng.randrange(4)
        if how == 0 and path:
            path[rng.randrange(len(path))] = rng.randbytes(32).hex()
        elif how == 1:
            e["map_path"] = path[:-1]
        elif how == 2:
            e["map_path"] = [*path, rng.randbytes(32).hex()]
        else:
            e["map_path"] = rng.choice(full["entries"])["map_path"]
    elif kind == 5 and entries:
        rng.choice(entries)["entry"] = rng.choice(full["entries"])["entry"]
    elif kind == 6 and entries:
        e = rng.choice(entries)
        e["entry"] = flip(e["entry"], rng)
    elif kind == 7:
        doc["header"] = flip(doc["header"], rng)
    elif len(entries) > 1:
        i = rng.randrange(len(entries) - 1)
        entries[i], entries[i + 1] = entries[i + 1], entries[i]


def test_frames_of_chosen_assets_are_judged_alike(tmp_path: Path) -> None:
    """Epoch-assets frames (PROTOCOL §11.2) after a verified one, changed in their
    entries list, indices, entry bytes, map paths or header, verified under their
    own choice or another; and frames of another kind than subscribed to."""
    rng = random.Random(23)
    log = FakeLog()
    for epoch in range(3):
        overrides = {"ETH": {"liabilities": 151}} if epoch == 2 else {}
        log.append(many(epoch, ASSETS, **overrides))
    everything = json.loads(log.assets_frame(2, ASSETS).to_json())
    cases, expected = [], []
    for i in range(500):
        chosen = list(rng.choice(CHOICES))
        asked = chosen if rng.random() < 0.8 else list(rng.choice(CHOICES))
        first = log.assets_frame(1, asked).to_json()
        doc = json.loads(log.assets_frame(2, chosen).to_json())
        if i % 10:
            mutated_frame(doc, rng, everything)
        last = json.dumps(doc)
        checkpoints = False
        if i % 25 == 0:
            last = rng.choice((log.messages[2].to_json(), log.checkpoint_frame(2).to_json()))
            checkpoints = rng.random() < 0.5
        assets = None if rng.random() < 0.05 else asked
        frames = [first, last]
        case: dict[str, Any] = {
            "kind": "frames",
            "frames": frames,
            "key": str(VKEY),
            "assets": assets,
            "checkpoints": checkpoints,
        }
        cases.append(case)
        expected.append(python_frames(frames, assets, checkpoints))
    got = answers(cases, tmp_path)
    differ = [(i, e, g) for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g]
    assert not differ, differ[:10]
    kinds = {e.split(" ")[0] for e in expected}
    assert {"ok", "format", "asset-map-mismatch", "asset-map-incomplete"} <= kinds, kinds
    assert any("absent" in e for e in expected) and any("insolvent" in e for e in expected)


COLD = Ed25519PrivateKey.from_private_bytes(bytes(range(129, 161)))
ATTESTED = ("BTC", "ETH", "SOL")
T0 = 1_790_000_000_000


def cold_report(name: str, epoch: int) -> bytes:
    """The cold wallet's signed report of 150 ``name`` as of ``epoch``."""
    return sign_report(ReserveReport("cold", name, 150, T0 + epoch * 1000 - 500), COLD)


def attested(epoch: int, binds: dict[str, bytes | None], liabilities: int = 100) -> bytes:
    """A record of ``ATTESTED`` in which each asset's source binds its report, if any."""
    assets = []
    for name, note in binds.items():
        a = asset(name, epoch, liabilities=liabilities if name == "ETH" else 100)
        if note is not None:
            signed = SignedReport.parse(note)
            r = signed.report
            bound = ReserveSource("cold", r.amount, r.as_of_ms, signed.key_id, signed.hash)
            a = dataclasses.replace(a, sources=(bound,))
        assets.append(a)
    return EpochRecord(epoch, T0 + epoch * 1000, 60_000, tuple(assets)).encode()


class ReportingLog:
    """A log whose records bind signed reports, with the frames a connection gets
    (PROTOCOL §11.2): the first carries every report its entries bind, each
    later one those not bound by the previous record for the same asset;
    ``fork_at``: the leaf at which a twin log (same key, same reports) differs."""

    def __init__(self, binds: list[dict[str, bytes | None]], fork_at: int | None = None) -> None:
        self.binds = binds
        self.log = FakeLog()
        for epoch, b in enumerate(binds):
            self.log.append(attested(epoch, b, liabilities=7 if epoch == fork_at else 100))

    def reports(self, epoch: int, first: bool, chosen: tuple[str, ...] | None) -> tuple[bytes, ...]:
        now = self.binds[epoch]
        before = {} if first or epoch == 0 else self.binds[epoch - 1]
        new = [
            note
            for name, note in now.items()
            if note is not None and note != before.get(name) and (chosen is None or name in chosen)
        ]
        return tuple(dict.fromkeys(new))  # none twice

    def frame(self, epoch: int, first: bool, chosen: tuple[str, ...] | None) -> dict[str, Any]:
        reports = self.reports(epoch, first, chosen)
        if chosen is None:
            message = dataclasses.replace(self.log.messages[epoch], reports=reports)
            return dict(json.loads(message.to_json()))
        sent = dataclasses.replace(self.log.assets_frame(epoch, chosen), reports=reports)
        return dict(json.loads(sent.to_json()))

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        return dict(json.loads(self.log.checkpoint_frame(epoch).to_json()))


def mutated_connection(
    frames: list[dict[str, Any]],
    rng: random.Random,
    twin: ReportingLog,
    epoch: int,
    chosen: tuple[str, ...] | None,
) -> None:
    """One change to the last of ``frames`` (of ``epoch``): the twin log's frame
    (whose first leaves differ), of this epoch or next to it; a report dropped,
    added or doubled; an inclusion hash flipped or taken from the twin's frame;
    the old ``consistency`` key."""
    last = frames[-1]
    kind = rng.randrange(9)
    if kind <= 1:
        frames[-1] = twin.frame(epoch, False, chosen)
    elif kind == 2:
        other = rng.choice([epoch - 1, min(epoch + 1, len(twin.binds) - 1)])
        frames[-1] = twin.frame(other, False, chosen)
    elif kind == 3 and last["reports"]:
        del last["reports"][rng.randrange(len(last["reports"]))]
    elif kind == 4:
        last["reports"].append(cold_report(rng.choice(["ADA", "BTC"]), 99).decode())
    elif kind == 5 and last["reports"]:
        last["reports"].append(rng.choice(last["reports"]))
    elif kind == 6 and last["inclusion"]:
        i = rng.randrange(len(last["inclusion"]))
        last["inclusion"][i] = rng.randbytes(32).hex()
    elif kind == 7 and last["inclusion"]:
        other = twin.frame(epoch, False, chosen)["inclusion"]
        i = rng.randrange(len(last["inclusion"]))
        last["inclusion"][i] = other[i]
    else:
        last["consistency"] = []


def test_connections_forks_and_reports_sent_once_are_judged_alike(tmp_path: Path) -> None:
    """Frames from an epoch on (full, chosen assets', checkpoints), each carrying
    the reports new since the previous epoch but the first of a connection (one
    reconnection, maybe), which carries them all: the same reports held at the
    end; and forks: a log whose first leaves differ from those verified, signed
    by the same key, and frames changed in their reports or inclusion path."""
    rng = random.Random(24)
    epochs = 9
    pool = {name: [cold_report(name, e) for e in range(epochs)] for name in ATTESTED}
    binds: list[dict[str, bytes | None]] = []
    for epoch in range(epochs):  # a report is rebound, or replaced, or dropped
        prev = binds[-1] if binds else {}
        binds.append(
            {
                name: rng.choice([prev.get(name), prev.get(name), pool[name][epoch], None])
                for name in ATTESTED
            }
        )
    base = ReportingLog(binds)
    twins = [ReportingLog(binds, fork_at=k) for k in range(epochs - 1)]
    cases, expected = [], []
    for i in range(400):
        start = rng.randrange(epochs - 1)
        end = rng.randrange(start + 1, epochs)
        kind = rng.randrange(10)
        chosen = None if kind < 6 else tuple(sorted(rng.sample(ATTESTED, rng.randint(1, 2))))
        checkpoints = kind == 9
        again = rng.randrange(start, end + 2)  # a reconnection at that epoch, if any
        if checkpoints:
            frames = [base.checkpoint(e) for e in range(start, end + 1)]
        else:
            frames = [base.frame(e, e in (start, again), chosen) for e in range(start, end + 1)]
        twin = twins[rng.randrange(end)]  # differs before the last frame's epoch
        if checkpoints and i % 2:
            frames[-1] = twin.checkpoint(end)
        elif not checkpoints and i % 3:
            mutated_connection(frames, rng, twin, end, chosen)
        texts = [json.dumps(f) for f in frames]
        assets = None if chosen is None else list(chosen)
        case = {"kind": "frames", "frames": texts, "key": str(VKEY), "assets": assets}
        cases.append({**case, "checkpoints": checkpoints})
        expected.append(python_frames(texts, assets, checkpoints))
    got = answers(cases, tmp_path)
    differ = [(i, e, g) for i, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g]
    assert not differ, differ[:10]
    kinds = {e.split(" ")[0] for e in expected}
    assert {"ok", "format", "fork", "inclusion-root-mismatch", "epoch-gap"} <= kinds, kinds
    assert sum(e == "fork" for e in expected) >= 40
    held = [e.rsplit("/", 1)[1] for e in expected if e.startswith("ok ")]
    assert sum(h.count(",") >= 1 for h in held) >= 20  # several reports held at once


def test_user_ids_are_refused_alike(tmp_path: Path) -> None:
    """Ids from characters assigned in the Unicode version of Python's unicodedata
    (a browser may know a later one: see docs/ARCHITECTURE.md, verifier/web/)."""
    rng = random.Random(22)
    pool = list("aZ09 .@\t\x7f\u00a0\u3000\u200b\u202e\u2066\ufeff\u0085\u2028\u00e9\u0301\u00c5")
    pool += ["\u030a", "\u1100", "\u1161", "\u11a8", "\u0f73", "\u2126", "\u212b", "\U0001f600"]
    pool += ["\U000e0001", "\U0001f1e6", "\ud800", "\u0378", "\uffff", "\u0344", "\u0958"]
    # (no low surrogate: JSON would carry "\ud800\udc00" to Node as one character)
    assigned = [c for c in map(chr, range(0x30000)) if unicodedata.category(c) not in ("Cn", "Cs")]
    ids = []
    for _ in range(1500):
        chars = pool if rng.random() < 0.7 else assigned
        ids.append("".join(rng.choice(chars) for _ in range(rng.randrange(1, 5))))
    ids += ["x" * 255, "x" * 256, "\u00e9" * 127, "\u00e9" * 128]
    expected = []
    for user in ids:
        try:
            check_user_id(user)
            expected.append("ok")
        except FormatError:
            expected.append("format")
    got = answers([{"kind": "user", "id": user} for user in ids], tmp_path)
    differ = [(ascii(u), e, g) for u, e, g in zip(ids, expected, got, strict=True) if e != g]
    assert not differ, differ[:10]
    assert 300 < expected.count("ok") < 1300
