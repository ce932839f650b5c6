"""Proof files (docs/PROTOCOL.md §6-7): the valid vector and every mutation of it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from verifier.checkpoint import VerifierKey
from verifier.errors import FormatError, SolvencyError, VerificationError
from verifier.proof import ProofFile, verify_proof

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
KEY = VerifierKey.parse((VECTORS / "verifier-key.txt").read_text().strip())
OTHER_KEY = VerifierKey.parse((VECTORS / "other-key.txt").read_text().strip())
VALID = (VECTORS / MANIFEST["valid"]).read_text()
ORIGIN = "example.com/solvency/test"


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


@pytest.mark.parametrize("case", MANIFEST["invalid"], ids=[c["file"] for c in MANIFEST["invalid"]])
def test_mutated_proofs_fail_with_their_check(case: dict[str, str]) -> None:
    text = (VECTORS / case["file"]).read_text()
    if case["expect"] == "format":
        with pytest.raises(FormatError):
            verify_proof(ProofFile.parse(text), KEY, origin=ORIGIN)
    else:
        with pytest.raises(VerificationError) as info:
            verify_proof(ProofFile.parse(text), KEY, origin=ORIGIN)
        assert info.value.check == case["expect"]


def test_unknown_key_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        verify_proof(ProofFile.parse(VALID), OTHER_KEY)
    assert info.value.check == "unknown-key"


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
