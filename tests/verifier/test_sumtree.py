"""Path verification (docs/PROTOCOL.md §3) against the reference tree."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import reference
from verifier.errors import FormatError, VerificationError
from verifier.hashing import MAX_BALANCE, commitment, leaf_hash
from verifier.sumtree import PathStep, root_from_path, verify_path


@st.composite
def trees(draw: st.DrawFn) -> tuple[int, dict[int, tuple[str, int]]]:
    height = draw(st.integers(0, 6))
    slots = draw(st.sets(st.integers(0, (1 << height) - 1), min_size=1))
    users = {s: (f"user{s}", draw(st.integers(0, MAX_BALANCE))) for s in slots}
    return height, users


@given(trees())
@settings(max_examples=100, deadline=None)
def test_every_path_verifies_and_root_sum_is_total(tree: tuple[int, dict]) -> None:
    height, users = tree
    levels = reference.build("BTC", height, users)
    root, total = levels[-1][0]
    assert total == sum(amount for _, amount in users.values())
    for slot, (user, amount) in users.items():
        leaf = leaf_hash("BTC", commitment(user, reference.salt(user)), amount)
        verify_path(
            height=height,
            root=root,
            liabilities=total,
            slot=slot,
            leaf=leaf,
            amount=amount,
            path=reference.path(levels, slot),
        )


def test_height_zero_tree_is_its_leaf() -> None:
    leaf = leaf_hash("BTC", bytes(32), 5)
    assert root_from_path(0, 0, leaf, 5, []) == (leaf, 5)


def test_short_hash_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        PathStep(bytes(8), 0)


def test_checks_are_named() -> None:
    leaf = leaf_hash("BTC", bytes(32), 5)
    step = PathStep(bytes(32), 1)
    cases = [
        (lambda: root_from_path(2, 0, leaf, 5, [step]), "path-length"),
        (lambda: root_from_path(1, 2, leaf, 5, [step]), "slot-range"),
        (lambda: root_from_path(1, 0, leaf, MAX_BALANCE + 1, [step]), "leaf-range"),
        (lambda: root_from_path(1, 0, leaf, 5, [PathStep(bytes(32), -1)]), "sibling-sum-range"),
    ]
    for call, check in cases:
        with pytest.raises(VerificationError) as info:
            call()
        assert info.value.check == check
