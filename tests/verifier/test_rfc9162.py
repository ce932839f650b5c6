"""RFC 9162 §2.1 proofs: generated proofs verify, every alteration is refused."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import rfc9162
from verifier.errors import FormatError, VerificationError


def naive_mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) written from RFC 9162 §2.1.1, over raw leaf data."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def log(size: int) -> tuple[list[bytes], list[bytes]]:
    data = [b"record %d" % i for i in range(size)]
    return data, [rfc9162.leaf_hash(d) for d in data]


@given(st.integers(0, 70))
def test_root_matches_the_rfc_definition(size: int) -> None:
    data, hashes = log(size)
    assert rfc9162.root_from_leaf_hashes(hashes) == naive_mth(data)


def test_known_roots() -> None:
    """Empty tree and a one-leaf tree, by hand."""
    assert rfc9162.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert rfc9162.root_from_leaf_hashes([rfc9162.leaf_hash(b"")]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


@st.composite
def index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 200))
    return draw(st.integers(0, size - 1)), size


@given(index_and_size())
@settings(max_examples=300)
def test_inclusion_proofs_verify(case: tuple[int, int]) -> None:
    index, size = case
    _, hashes = log(size)
    proof = rfc9162.inclusion_proof(hashes, index, size)
    rfc9162.verify_inclusion(
        hashes[index], index, size, proof, rfc9162.root_from_leaf_hashes(hashes)
    )


def _check(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except VerificationError as exc:
        return exc.check
    except FormatError:
        return "format"
    return "ok"


@given(index_and_size(), st.data())
@settings(max_examples=300)
def test_altered_inclusion_proofs_fail(case: tuple[int, int], data: st.DataObject) -> None:
    index, size = case
    _, hashes = log(size + 1)
    root = rfc9162.root_from_leaf_hashes(hashes[:size])
    proof = rfc9162.inclusion_proof(hashes, index, size)
    leaf = hashes[index]
    attempts = [
        lambda: rfc9162.verify_inclusion(leaf, index, size, [*proof, bytes(32)], root),
        lambda: rfc9162.verify_inclusion(hashes[size], index, size, proof, root),
        lambda: rfc9162.verify_inclusion(leaf, size, size, proof, root),
    ]
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        flipped = bytearray(proof[i])
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad = [*proof[:i], bytes(flipped), *proof[i + 1 :]]
        attempts += [
            lambda: rfc9162.verify_inclusion(leaf, index, size, bad, root),
            lambda: rfc9162.verify_inclusion(leaf, index, size, proof[:-1], root),
        ]
    if size > 1:
        other = (index + 1) % size
        attempts.append(lambda: rfc9162.verify_inclusion(leaf, other, size, proof, root))
    for attempt in attempts:
        assert _check(attempt) != "ok"


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, 200))
    return draw(st.integers(1, new)), new


@given(two_sizes())
@settings(max_examples=300)
def test_consistency_proofs_verify(case: tuple[int, int]) -> None:
    old, new = case
    _, hashes = log(new)
    proof = rfc9162.consistency_proof(hashes, old, new)
    rfc9162.verify_consistency(
        old,
        new,
        rfc9162.root_from_leaf_hashes(hashes[:old]),
        rfc9162.root_from_leaf_hashes(hashes),
        proof,
    )


@given(two_sizes(), st.data())
@settings(max_examples=300)
def test_altered_consistency_proofs_fail(case: tuple[int, int], data: st.DataObject) -> None:
    old, new = case
    _, hashes = log(new + 1)
    old_root = rfc9162.root_from_leaf_hashes(hashes[:old])
    new_root = rfc9162.root_from_leaf_hashes(hashes[:new])
    forked = rfc9162.root_from_leaf_hashes([*hashes[: old - 1], bytes(32), *hashes[old:new]])
    proof = rfc9162.consistency_proof(hashes, old, new)
    attempts = [
        lambda: rfc9162.verify_consistency(old, new, old_root, new_root, [*proof, bytes(32)]),
        lambda: rfc9162.verify_consistency(old, new, old_root, forked, proof),
        lambda: rfc9162.verify_consistency(new + 1, new, old_root, new_root, proof),
    ]
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        flipped = bytearray(proof[i])
        flipped[0] ^= 0x80
        attempts += [
            lambda: rfc9162.verify_consistency(
                old, new, old_root, new_root, [*proof[:i], bytes(flipped), *proof[i + 1 :]]
            ),
            lambda: rfc9162.verify_consistency(old, new, old_root, new_root, proof[:-1]),
        ]
    if old < new:
        attempts.append(lambda: rfc9162.verify_consistency(old, new, new_root, new_root, proof))
    for attempt in attempts:
        assert _check(attempt) != "ok"


def test_consistency_edge_cases() -> None:
    _, hashes = log(5)
    root5 = rfc9162.root_from_leaf_hashes(hashes)
    rfc9162.verify_consistency(0, 5, rfc9162.EMPTY_ROOT, root5, [])
    rfc9162.verify_consistency(5, 5, root5, root5, [])
    assert _check(lambda: rfc9162.verify_consistency(5, 5, root5, bytes(32), [])) == (
        "consistency-root-mismatch"
    )
    assert _check(lambda: rfc9162.verify_consistency(5, 5, root5, root5, [root5])) == (
        "consistency-proof-size"
    )
    assert _check(lambda: rfc9162.verify_consistency(0, 5, bytes(32), root5, [])) == (
        "consistency-root-mismatch"
    )
    assert _check(lambda: rfc9162.verify_consistency(6, 5, root5, root5, [])) == "consistency-sizes"
    with pytest.raises(FormatError):
        rfc9162.verify_consistency(1, 5, bytes(31), root5, [])


@given(st.integers(0, 300))
def test_the_last_leafs_path_gives_the_root_before_it(n: int) -> None:
    """PATH(n, D[0:n+1]) folds to MTH(D[0:n]), as the consistency proof n -> n + 1 shows."""
    hashes = [rfc9162.leaf_hash(i.to_bytes(4, "big")) for i in range(n + 1)]
    path = rfc9162.inclusion_proof(hashes, n, n + 1)
    assert rfc9162.prefix_root(path) == rfc9162.root_from_leaf_hashes(hashes[:n])
    if n:  # the same hashes as the consistency proof carries (less the new leaf)
        consistency = rfc9162.consistency_proof(hashes, n, n + 1)
        assert set(path) <= set(consistency) | {rfc9162.root_from_leaf_hashes(hashes[:n])}


@given(st.integers(1, 300))
def test_the_last_consistency_proof_follows_from_the_last_path(size: int) -> None:
    hashes = [rfc9162.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    path = rfc9162.inclusion_proof(hashes, size - 1, size)
    want = rfc9162.consistency_proof(hashes, size - 1, size)
    assert rfc9162.last_consistency(size, path, hashes[-1]) == want
