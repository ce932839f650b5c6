"""The prover's sum trees reproduce the roots of the known-answer vectors
(tests/vectors/record.json), built from the generator's own inputs."""

import base64
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from prover.tree import SumTree
from verifier.hashing import commitment
from verifier.record import RecordHeader, decode_entry

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gen_vectors", ROOT / "scripts" / "gen_vectors.py")
assert spec is not None and spec.loader is not None
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def prover_tree(asset: str) -> SumTree:
    """The prover's tree of ``asset`` over the generator's holdings."""
    _, height, users = gen.HOLDINGS[asset]
    names = list(users)
    return SumTree.build(
        asset,
        height,
        gen.PADDING_KEY,
        np.array([users[u][0] for u in names]),
        np.frombuffer(b"".join(commitment(u, gen.salt_of(u)) for u in names), np.uint8).reshape(
            -1, 32
        ),
        np.array([users[u][1] for u in names], np.uint64),
    )


def test_prover_trees_match_the_vector_record() -> None:
    record = json.loads((ROOT / "tests" / "vectors" / "record.json").read_text())["fields"]
    expected = {
        a["asset"]: (a["root"], int(a["liabilities"]), a["height"]) for a in record["assets"]
    }
    for asset in gen.HOLDINGS:
        tree = prover_tree(asset)
        assert (tree.root.hex(), tree.total, tree.height) == expected[asset]


MANIFEST = json.loads((ROOT / "tests" / "vectors" / "manifest.json").read_text())


@pytest.mark.parametrize("name", [MANIFEST["valid"], MANIFEST["cosigned"]["file"]])
def test_prover_paths_match_the_vector_proof(name: str) -> None:
    """The prover's tree hands out exactly the paths of the valid proofs of
    tests/vectors/ (the plain one, and the one whose checkpoint is cosigned)."""
    proof = json.loads((ROOT / "tests" / "vectors" / name).read_text())
    header = RecordHeader.decode(base64.b64decode(proof["header"]))
    for entry in proof["assets"]:
        tree = prover_tree(decode_entry(base64.b64decode(entry["entry"]), header).asset)
        assert tree.leaf(entry["slot"])[1] == int(entry["balance"])
        assert [[h.hex(), str(s)] for h, s in tree.path(entry["slot"])] == entry["path"]
