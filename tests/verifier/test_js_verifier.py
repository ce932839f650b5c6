"""The browser verifier (verifier/web/, JavaScript) is held to the Python verifier's
contract: its own suite under Node (tests/js/: every vector of tests/vectors/, valid
and invalid, with the same check names), and the same answers as the Python
verifier to a few hundred mutated proof files, records and user ids made here."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from verifier.checkpoint import VerifierKey
from verifier.cosignature import WitnessKey
from verifier.errors import FormatError, VerificationError
from verifier.hashing import check_user_id
from verifier.proof import ProofFile, verify_proof
from verifier.record import EpochRecord

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


def mutated(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one random change: a byte replaced, dropped, doubled or
    inserted; a character of a string replaced; or a bit of the record flipped
    (re-encoded, so the base64 stays canonical)."""
    kind = rng.randrange(6)
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
        record = bytearray(base64.b64decode(doc["record"]))
        record[rng.randrange(len(record))] ^= 1 << rng.randrange(8)
        doc["record"] = base64.b64encode(record).decode()
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=rng.random() < 0.5).encode(
        "utf-8", "surrogatepass"
    )


def test_mutated_proofs_fail_alike(tmp_path: Path) -> None:
    rng = random.Random(20)
    bases = [({"file": MANIFEST["valid"], "user": "alice"}), MANIFEST["cosigned"]]
    cases, expected = [], []
    for i in range(400):
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


def record_fields(record: EpochRecord) -> str:
    """A decoded record as tests/js/differential.mjs writes it."""
    assets = []
    for a in record.assets:
        sources = "|".join(
            f"{s.name}:{s.amount}:{s.as_of_ms}:{s.key_id}:{s.report_hash.hex()}" for s in a.sources
        )
        assets.append(
            f"{a.asset},{a.decimals},{a.height},{a.root.hex()},{a.liabilities},{a.reserves},"
            f"{a.status.name},{sources}"
        )
    return f"{record.epoch}/{record.timestamp_ms}/{record.max_reserve_age_ms}/{';'.join(assets)}"


def test_mutated_records_decode_alike(tmp_path: Path) -> None:
    rng = random.Random(21)
    vector = bytes.fromhex(json.loads((VECTORS / "record.json").read_text())["hex"])
    records = []
    for _ in range(600):
        raw = bytearray(vector)
        for _ in range(rng.choice((1, 1, 2))):
            raw[rng.randrange(len(raw))] = rng.choice((0, 1, 2, 3, 0x20, 0x2D, 0x41, 0x7F, 0xFF))
        if rng.random() < 0.1:
            raw = raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw + b"\x00"
        records.append(bytes(raw))
    expected = []
    for raw in records:
        try:
            expected.append(f"ok {record_fields(EpochRecord.decode(raw))}")
        except FormatError:
            expected.append("format")
    got = answers([{"kind": "record", "hex": raw.hex()} for raw in records], tmp_path)
    differ = [
        (records[i].hex(), e, g)
        for i, (e, g) in enumerate(zip(expected, got, strict=True))
        if e != g
    ]
    assert not differ, differ[:5]
    assert 50 < sum(e != "format" for e in expected) < 550


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
