"""The numpy sum tree against the naive reference tree (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prover.errors import TreeError
from prover.tree import SumTree
from tests import reference
from verifier.hashing import MAX_BALANCE, commitment, leaf_hash, node_hash

ASSET = "BTC"


def commitments_of(users: list[str]) -> np.ndarray:
    raw = b"".join(commitment(u, reference.salt(u)) for u in users)
    return np.frombuffer(raw, np.uint8).reshape(len(users), 32)


def build(height: int, state: dict[int, tuple[str, int]]) -> SumTree:
    slots = sorted(state)
    return SumTree.build(
        ASSET,
        height,
        reference.PADDING_KEY,
        np.array(slots, np.int64),
        commitments_of([state[s][0] for s in slots]),
        np.array([state[s][1] for s in slots], np.uint64),
    )


@st.composite
def states(draw: st.DrawFn, height: int | None = None) -> tuple[int, dict[int, tuple[str, int]]]:
    h = draw(st.integers(0, 6)) if height is None else height
    slots = draw(st.sets(st.integers(0, (1 << h) - 1)))
    amounts = st.one_of(st.integers(0, MAX_BALANCE), st.sampled_from([0, 1, MAX_BALANCE]))
    return h, {s: (f"user{s}", draw(amounts)) for s in slots}


@given(states())
@settings(max_examples=150, deadline=None)
def test_build_matches_reference(case: tuple[int, dict[int, tuple[str, int]]]) -> None:
    height, state = case
    tree = build(height, state)
    ref = reference.build(ASSET, height, state)
    assert (tree.root, tree.total) == ref[-1][0]
    assert tree.total == sum(a for _, a in state.values())
    for slot in range(tree.capacity):
        assert tree.path(slot) == [(p.hash, p.sum) for p in reference.path(ref, slot)]
        assert tree.leaf(slot) == ref[0][slot]


def test_paths_lead_to_the_root() -> None:
    state = {s: (f"u{s}", s * 1000 + 1) for s in range(0, 64, 3)}
    tree = build(6, state)
    for slot, (user, amount) in state.items():
        node, total = leaf_hash(ASSET, commitment(user, reference.salt(user)), amount), amount
        for level, (h, s) in enumerate(tree.path(slot)):
            if (slot >> level) & 1:
                node = node_hash(h, s, node, total)
            else:
                node = node_hash(node, total, h, s)
            total += s
        assert (node, total) == (tree.root, tree.total)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, dict, list[tuple[dict, list[int]]]]:
    height, state = draw(states(height=draw(st.integers(1, 5))))
    batches = []
    current = dict(state)
    for _ in range(draw(st.integers(1, 4))):
        slots = draw(st.lists(st.integers(0, (1 << height) - 1), unique=True, max_size=12))
        sets, clears = {}, []
        for s in slots:
            if draw(st.booleans()) and s in current:
                clears.append(s)
                del current[s]
            else:
                user = current[s][0] if s in current else f"new{s}-{len(batches)}"
                sets[s] = current[s] = (user, draw(st.integers(0, MAX_BALANCE)))
        batches.append((sets, clears))
    return height, state, batches


@given(histories())
@settings(max_examples=150, deadline=None)
def test_batches_equal_a_fresh_build(case: tuple[int, dict, list]) -> None:
    height, state, batches = case
    tree = build(height, state)
    final = dict(state)
    for sets, clears in batches:
        slots = sorted(sets)
        tree.apply(
            np.array(slots, np.int64),
            commitments_of([sets[s][0] for s in slots]).reshape(len(slots), 32),
            np.array([sets[s][1] for s in slots], np.uint64),
            np.array(clears, np.int64),
        )
        final.update(sets)
        for s in clears:
            del final[s]
    fresh = build(height, final)
    assert (tree.root, tree.total) == (fresh.root, fresh.total)
    assert tree.amounts().tolist() == fresh.amounts().tolist()


def test_each_dirty_node_is_rehashed_once() -> None:
    tree = build(4, {})
    # slots 0 and 1 share every ancestor: 2 leaves + 4 ancestors
    assert (
        tree.apply(np.array([0, 1]), commitments_of(["a", "b"]), np.array([1, 2], np.uint64)) == 6
    )
    # slots 0 and 15 share only the root: 2 leaves + 2*3 ancestors + root
    assert (
        tree.apply(np.array([0, 15]), commitments_of(["a", "c"]), np.array([1, 2], np.uint64)) == 9
    )


def test_sums_above_64_bits() -> None:
    state = {s: (f"u{s}", MAX_BALANCE) for s in range(8)}
    tree = build(3, state)
    assert tree.total == 8 * MAX_BALANCE
    assert tree.path(0)[2][1] == 4 * MAX_BALANCE


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.apply(np.array([16]), commitments_of(["a"]), np.array([1])), "outside"),
        (lambda t: t.apply(np.array([-1]), commitments_of(["a"]), np.array([1])), "outside"),
        (
            lambda t: t.apply(np.array([1, 1]), commitments_of(["a", "b"]), np.array([1, 2])),
            "twice",
        ),
        (
            lambda t: t.apply(np.array([1]), commitments_of(["a"]), np.array([1]), np.array([1])),
            "both",
        ),
        (lambda t: t.apply(np.array([1]), np.zeros((1, 31), np.uint8), np.array([1])), "shape"),
        (lambda t: t.apply(np.array([1]), commitments_of(["a"]), np.array([-5])), "amounts"),
        (lambda t: t.apply(np.array([1]), commitments_of(["a"]), np.array([1.5])), "amounts"),
        (lambda t: t.apply(np.array([1.0]), commitments_of(["a"]), np.array([1])), "integer"),
        (lambda t: t.path(16), "outside"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(call, message: str) -> None:  # type: ignore[no-untyped-def]
    tree = build(4, {3: ("x", 5)})
    before = (tree.root, tree.total)
    with pytest.raises(TreeError, match=message):
        call(tree)
    assert (tree.root, tree.total) == before


def test_bad_heights_and_keys() -> None:
    with pytest.raises(TreeError):
        SumTree(ASSET, 33, bytes(32))
    with pytest.raises(TreeError):
        SumTree(ASSET, 3, bytes(16))
