"""The prover's sum trees reproduce the roots of the known-answer vectors
(tests/vectors/record.json), built from the generator's own inputs."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from prover.tree import SumTree
from verifier.hashing import commitment

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gen_vectors", ROOT / "scripts" / "gen_vectors.py")
assert spec is not None and spec.loader is not None
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_prover_trees_match_the_vector_record() -> None:
    record = json.loads((ROOT / "tests" / "vectors" / "record.json").read_text())["fields"]
    expected = {
        a["asset"]: (a["root"], int(a["liabilities"]), a["height"]) for a in record["assets"]
    }
    for asset, (_, height, users) in gen.HOLDINGS.items():
        names = list(users)
        tree = SumTree.build(
            asset,
            height,
            gen.PADDING_KEY,
            np.array([users[u][0] for u in names]),
            np.frombuffer(b"".join(commitment(u, gen.salt_of(u)) for u in names), np.uint8).reshape(
                -1, 32
            ),
            np.array([users[u][1] for u in names], np.uint64),
        )
        assert (tree.root.hex(), tree.total, tree.height) == expected[asset]
