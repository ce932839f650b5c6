"""Proof files (docs/PROTOCOL.md §6-7): the valid vector and every mutation of it."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from verifier.checkpoint import VerifierKey
from verifier.cosignature import WitnessKey
from verifier.errors import FormatError, SolvencyError, VerificationError
from verifier.proof import ProofFile, verify_proof

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
KEY = VerifierKey.parse((VECTORS / "verifier-key.txt").read_text().strip())
OTHER_KEY = VerifierKey.parse((VECTORS / "other-key.txt").read_text().strip())
VALID = (VECTORS / MANIFEST["valid"]).read_text()
ORIGIN = "example.com/solvency/test"

# Every check name of PROTOCOL §3, §7 and §12.3 (with RFC 9162's inclusion checks), and
# "format" for a FormatError: each must be the expectation of some vector.
CHECK_NAMES = {
    "format",
    "unknown-key",
    "signature-invalid",
    "origin-mismatch",
    "record-not-in-log",
    "inclusion-proof-size",
    "inclusion-root-mismatch",
    "user-mismatch",
    "duplicate-asset",
    "asset-map-mismatch",
    "path-length",
    "slot-range",
    "leaf-range",
    "sibling-sum-range",
    "root-mismatch",
    "liabilities-mismatch",
    "witness-signature-invalid",
    "witness-time",
    "witness-quorum",
}


def witness_config(case: dict[str, Any]) -> dict[str, Any]:
    """The witnesses (keys in the named files), quorum and clock a manifest case names."""
    witnesses = [
        WitnessKey.parse(line)
        for name in case.get("witnesses", ())
        for line in (VECTORS / name).read_text().splitlines()
    ]
    return {"witnesses": witnesses, "quorum": case.get("quorum", 0), "now": case.get("now")}


def test_vectors_are_up_to_date() -> None:
    """The committed vectors are exactly what scripts/gen_vectors.py produces."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_valid_proof_verifies() -> None:
    report = verify_proof(ProofFile.parse(VALID), KEY, user="alice", origin=ORIGIN)
    assert report.epoch == 1 and report.checkpoint.size == 3
    assert [(a.asset, a.balance, a.status) for a in report.assets] == [
        ("BTC", 150_000_000, "solvent"),
        ("ETH", 3_000_000_000, "unproven"),
    ]


def test_parse_and_serialize_are_inverse() -> None:
    assert ProofFile.parse(VALID).to_json() == VALID.strip()


def test_cosigned_proof_verifies_with_its_quorum() -> None:
    """The manifest's cosigned proof: both witnesses cosigned, dated plausibly at
    the manifest's clock; without witnesses configured the lines are ignored."""
    case = MANIFEST["cosigned"]
    proof = ProofFile.parse((VECTORS / case["file"]).read_bytes())
    report = verify_proof(proof, KEY, user="alice", **witness_config(case))
    assert [c.witness.name for c in report.cosignatures] == [
        "witness-a.example",
        "witness-b.example",
    ]
    assert all(0 <= c.timestamp - report.timestamp_ms // 1000 <= 60 for c in report.cosignatures)
    plain = verify_proof(proof, KEY, user="alice")
    assert plain.cosignatures == () and plain.epoch == report.epoch
    assert proof.assets == ProofFile.parse(VALID).assets


@pytest.mark.parametrize(
    "case",
    [c for c in MANIFEST["invalid"] if "witnesses" in c and c["expect"] != "format"],
    ids=lambda c: c["file"],
)
def test_witness_vectors_differ_only_in_their_cosignatures(case: dict[str, Any]) -> None:
    """Without witnesses configured each of them verifies: the cosignature lines
    alone make it fail."""
    verify_proof(ProofFile.parse((VECTORS / case["file"]).read_bytes()), KEY, user="alice")


def _case_id(case: dict[str, Any]) -> str:
    extra = "".join(f" {k}={case[k]}" for k in ("key", "user") if k in case)
    return case["file"] + extra


@pytest.mark.parametrize(
    "case", MANIFEST["invalid"], ids=[_case_id(c) for c in MANIFEST["invalid"]]
)
def test_mutated_proofs_fail_with_their_check(case: dict[str, Any]) -> None:
    """Each vector, read as bytes as the CLI reads it, and checked as the
    manifest says (PROTOCOL §8): under ``key``, for ``user``, with ``witnesses``,
    ``quorum`` and the clock at ``now`` when named."""
    data = (VECTORS / case["file"]).read_bytes()
    key = VerifierKey.parse((VECTORS / case.get("key", "verifier-key.txt")).read_text().strip())
    config = witness_config(case)
    if case["expect"] == "format":
        with pytest.raises(FormatError):
            verify_proof(ProofFile.parse(data), key, user=case.get("user"), **config)
    else:
        with pytest.raises(VerificationError) as info:
            verify_proof(ProofFile.parse(data), key, user=case.get("user"), **config)
        assert info.value.check == case["expect"]


def test_every_check_name_has_a_vector() -> None:
    assert {c["expect"] for c in MANIFEST["invalid"]} == CHECK_NAMES
    files = {p.relative_to(VECTORS).as_posix() for p in (VECTORS / "invalid").iterdir()}
    assert files == {c["file"] for c in MANIFEST["invalid"] if c["file"].startswith("invalid/")}


def test_duplicate_keys_are_refused_at_every_depth() -> None:
    """A second value for a key must not win (nor the first): the file is refused."""
    top = VALID.replace('"user":"alice"', '"user":"carol","user":"alice"', 1)
    entry = VALID.replace('"index":0,', '"index":1,"index":0,', 1)
    assert top != VALID and entry != VALID
    for text in (top, entry):
        with pytest.raises(FormatError, match="appears twice"):
            ProofFile.parse(text)


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + VALID.encode(),  # UTF-8 byte order mark
        "\ufeff" + VALID,  # the same, already decoded
        VALID.encode("utf-16"),  # json.loads(bytes) would detect and accept UTF-16
        VALID.encode("utf-32-be"),
        VALID.encode().replace(b'"alice"', b'"al\xe9"', 1),  # Latin-1, not UTF-8
        VALID.replace('"alice"', '"al', 1).encode() + b"\xed\xa0\x80" + b'"',  # UTF-8 surrogate
    ],
)
def test_only_utf8_without_bom_is_read(data: bytes | str) -> None:
    with pytest.raises(FormatError):
        ProofFile.parse(data)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"slot":5', '"slot":5.0'),
        ('"slot":5', '"slot":5e0'),
        ('"slot":5', '"slot":-0'),
        ('"slot":5', '"slot":NaN'),
        ('"slot":5', '"slot":Infinity'),
        ('"slot":5', '"slot":true'),
        ('"user":"alice"', '"user":"\\udc00alice"'),
    ],
)
def test_numbers_and_strings_outside_the_dialect_are_refused(old: str, new: str) -> None:
    assert old in VALID
    with pytest.raises(FormatError):
        ProofFile.parse(VALID.replace(old, new, 1))


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("balance", str(2**64 - 1), "root-mismatch"),  # in range: the hash decides
        ("balance", str(2**64), "leaf-range"),
        ("balance", str(2**128), "leaf-range"),
        ("balance", "9" * 39, "leaf-range"),
        ("slot", 7, "root-mismatch"),
        ("slot", 8, "slot-range"),
        ("slot", 2**64 - 1, "slot-range"),
        ("slot", 10**20 - 1, "slot-range"),
    ],
)
def test_values_out_of_range_fail_their_check(field: str, value: object, check: str) -> None:
    """The syntax admits every value of the field's width; PROTOCOL §3 bounds it."""
    doc = json.loads(VALID)
    doc["assets"][0][field] = value
    with pytest.raises(VerificationError) as info:
        verify_proof(ProofFile.parse(json.dumps(doc)), KEY)
    assert info.value.check == check


def test_sibling_sums_out_of_range_fail_their_check() -> None:
    doc = json.loads(VALID)
    doc["assets"][0]["path"][1][1] = "9" * 39
    with pytest.raises(VerificationError) as info:
        verify_proof(ProofFile.parse(json.dumps(doc)), KEY)
    assert info.value.check == "sibling-sum-range"


def test_empty_assets_are_refused() -> None:
    doc = json.loads(VALID)
    doc["assets"] = []
    with pytest.raises(FormatError, match="non-empty"):
        ProofFile.parse(json.dumps(doc))


def test_unknown_key_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        verify_proof(ProofFile.parse(VALID), OTHER_KEY)
    assert info.value.check == "unknown-key"


def test_origin_must_be_the_key_name() -> None:
    """The key's name is the origin (PROTOCOL §5), and the caller's if given."""
    verify_proof(ProofFile.parse(VALID), KEY, origin=ORIGIN)
    with pytest.raises(VerificationError) as info:
        verify_proof(ProofFile.parse(VALID), KEY, origin="example.com/solvency/other")
    assert info.value.check == "origin-mismatch"


def test_wrong_user_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        verify_proof(ProofFile.parse(VALID), KEY, user="bob")
    assert info.value.check == "user-mismatch"


def _leaves(doc: object, path: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaves(v, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaves(v, (*path, i))]
    return [path]


LEAF_PATHS = _leaves(json.loads(VALID))


@given(st.sampled_from(LEAF_PATHS), st.data())
def test_changing_any_value_fails(where: tuple, data: st.DataObject) -> None:
    """Every scalar in the file is authenticated: replacing it makes verification fail."""
    doc = json.loads(VALID)
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    old = parent[where[-1]]
    if isinstance(old, int):
        new: object = data.draw(st.integers(0, 2**70).filter(lambda v: v != old))
    else:
        new = data.draw(st.text(max_size=80).filter(lambda v: v != old))
    parent[where[-1]] = new
    with pytest.raises(SolvencyError):
        verify_proof(ProofFile.parse(json.dumps(doc)), KEY, origin=ORIGIN)


@given(st.binary(max_size=400))
def test_garbage_raises_only_format_error(raw: bytes) -> None:
    with pytest.raises(FormatError):
        ProofFile.parse(raw)
