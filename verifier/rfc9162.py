"""RFC 9162 §2.1 Merkle tree hashing and proofs, for the log of epochs (PROTOCOL §5).

Leaf hash ``H(0x00 || data)``, node hash ``H(0x01 || left || right)``, SHA-256.
Indices count from 0. The verifying functions compute the proof length they
expect from the index and sizes and reject any other length.

The generating functions ``inclusion_path`` and ``consistency_path`` unroll
the recursive PATH and SUBPROOF definitions of §2.1.3.1 and §2.1.4.1 over a
function giving the root of any range of leaves, so a log that caches its
subtree roots (storage/log.py) proves in O(log n) range roots;
``inclusion_proof`` and ``consistency_proof`` apply them to a list of leaf
hashes (tests and small logs).

The tree shape is also that of a record's asset map (PROTOCOL §4.4), which
has its own hashes: ``root_from_leaf_hashes``, ``inclusion_proof`` and
``verify_inclusion`` take the node hash (and the empty root) as arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from verifier.errors import FormatError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "NodeHash",
    "RangeRoot",
    "consistency_path",
    "consistency_proof",
    "inclusion_path",
    "inclusion_proof",
    "last_consistency",
    "leaf_hash",
    "node_hash",
    "prefix_root",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeHash = Callable[[bytes, bytes], bytes]
RangeRoot = Callable[[int, int], bytes]
"""``range_root(start, end)`` is MTH(D[start:end]), for 0 <= start < end <= size."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(
    hashes: Sequence[bytes], node: NodeHash = node_hash, empty: bytes = EMPTY_ROOT
) -> bytes:
    """MTH of a list of leaf hashes (§2.1.1)."""
    if not hashes:
        return empty
    level = list(hashes)
    # Fold pairs left to right; an odd last node moves up unchanged. This gives
    # the same tree as the recursive split at the largest power of two.
    while len(level) > 1:
        nxt = [node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(index: int, size: int, range_root: RangeRoot) -> list[bytes]:
    """PATH(index, D[0:size]) of §2.1.3.1, leaf side first: the recursion
    unrolled, each step adding the root of the subtree its inner result does
    not descend into (the list is built outside-in, then reversed)."""
    if not 0 <= index < size:
        raise ValueError(f"no leaf {index} in a tree of {size}")
    proof: list[bytes] = []
    start, m, n = 0, index, size
    while n > 1:
        k = _split(n)
        if m < k:
            proof.append(range_root(start + k, start + n))
            n = k
        else:
            proof.append(range_root(start, start + k))
            start, m, n = start + k, m - k, n - k
    proof.reverse()
    return proof


def consistency_path(old_size: int, new_size: int, range_root: RangeRoot) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of §2.1.4.1 (empty if old_size is 0 or
    equal): SUBPROOF(m, D[start:start+n], complete) unrolled as above."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, m, n, complete = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            proof.append(range_root(start + k, start + n))
            n = k
        else:
            proof.append(range_root(start, start + k))
            start, m, n, complete = start + k, m - k, n - k, False
    if not complete:
        proof.append(range_root(start, start + n))
    proof.reverse()
    return proof


def inclusion_proof(
    hashes: Sequence[bytes], index: int, size: int, node: NodeHash = node_hash
) -> list[bytes]:
    """PATH(index, D[0:size]) of §2.1.3.1 over the list of leaf hashes."""
    if not 0 <= index < size <= len(hashes):
        raise ValueError(f"no leaf {index} in a tree of {size}")
    return inclusion_path(index, size, lambda a, b: root_from_leaf_hashes(hashes[a:b], node))


def consistency_proof(hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of §2.1.4.1 over the list of leaf hashes
    (empty if old_size is 0 or equal)."""
    if not 0 <= old_size <= new_size <= len(hashes):
        raise ValueError(f"no consistency proof from {old_size} to {new_size}")
    return consistency_path(old_size, new_size, lambda a, b: root_from_leaf_hashes(hashes[a:b]))


def prefix_root(last_path: Sequence[bytes]) -> bytes:
    """MTH(D[0:n]) from PATH(n, D[0:n+1]), the inclusion path of the last of
    n + 1 leaves: that path is, leaf side first, the roots of the complete
    subtrees that make up the first n leaves, so folding it gives their root.
    Once the path is verified against the root of n + 1 leaves, comparing this
    with a known root of n leaves is the consistency check from n to n + 1."""
    _check_hashes(last_path)
    if not last_path:
        return EMPTY_ROOT
    root = last_path[0]
    for h in last_path[1:]:
        root = node_hash(h, root)
    return root


def last_consistency(size: int, last_path: Sequence[bytes], leaf: bytes) -> list[bytes]:
    """PROOF(size - 1, D[0:size]) of §2.1.4.1 from the inclusion path of the
    last leaf, PATH(size - 1, D[0:size]), and that leaf's hash: the proof
    needs no hash but the complete subtrees of the first size - 1 leaves
    (the path, smallest and rightmost first) and the new leaf."""
    _check_hashes(last_path, leaf)
    n = size - 1
    widths = [1 << i for i in range(n.bit_length()) if n >> i & 1]  # ascending
    if n < 0 or len(widths) != len(last_path):
        raise ValueError(f"not the path of the last of {size} leaves")
    roots = {(n, size): leaf}
    end = n
    for width, h in zip(widths, last_path, strict=True):
        roots[end - width, end] = h
        end -= width
    return consistency_path(n, size, lambda a, b: roots[a, b])


def _check_hashes(proof: Sequence[bytes], *roots: bytes) -> None:
    for h in (*proof, *roots):
        if not isinstance(h, bytes) or len(h) != 32:
            raise FormatError("log hashes must be 32 bytes")


def verify_inclusion(
    leaf: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
    node: NodeHash = node_hash,
) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` with
    ``root`` (§2.1.3.2).

    Raises:
        VerificationError: ``inclusion-index``, ``inclusion-proof-size`` or
            ``inclusion-root-mismatch``.
    """
    _check_hashes(proof, leaf, root)
    if not 0 <= index < size:
        raise VerificationError("inclusion-index", f"index {index} is not in a log of {size}")
    # Expected length: the levels below the point where the paths to the leaf
    # and to the last leaf part, plus the left siblings above it (its "border").
    inner = (index ^ (size - 1)).bit_length()
    expected = inner + (index >> inner).bit_count()
    if len(proof) != expected:
        raise VerificationError(
            "inclusion-proof-size", f"proof has {len(proof)} hashes, want {expected}"
        )
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion-proof-size", "proof is too long")
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion-proof-size", "proof is too short")
    if r != root:
        raise VerificationError(
            "inclusion-root-mismatch", "the inclusion proof does not lead to the root"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the tree of
    ``old_size`` with ``old_root`` (§2.1.4.2).

    Raises:
        VerificationError: ``consistency-sizes``, ``consistency-proof-size`` or
            ``consistency-root-mismatch``.
    """
    _check_hashes(proof, old_root, new_root)
    if not 0 <= old_size <= new_size:
        raise VerificationError(
            "consistency-sizes", f"a log cannot shrink from {old_size} to {new_size}"
        )
    if old_size == 0 or old_size == new_size:
        if proof:
            raise VerificationError("consistency-proof-size", "proof must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise VerificationError("consistency-root-mismatch", "old root is not the empty root")
        if old_size == new_size and old_root != new_root:
            raise VerificationError(
                "consistency-root-mismatch", f"two different roots for size {old_size}"
            )
        return
    fn, sn = old_size - 1, new_size - 1
    while fn % 2 == 1:  # skip the levels where the old tree's last node is a right child
        fn >>= 1
        sn >>= 1
    expected = _consistency_length(old_size, new_size)
    if len(proof) != expected:
        raise VerificationError(
            "consistency-proof-size", f"proof has {len(proof)} hashes, want {expected}"
        )
    items = list(proof)
    if old_size == 1 << (old_size.bit_length() - 1):  # a power of two: old root is the seed
        items.insert(0, old_root)
    fr = sr = items[0]
    for c in items[1:]:
        if sn == 0:
            raise VerificationError("consistency-proof-size", "proof is too long")
        if fn % 2 == 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency-proof-size", "proof is too short")
    if fr != old_root:
        raise VerificationError("consistency-root-mismatch", "proof does not lead to the old root")
    if sr != new_root:
        raise VerificationError("consistency-root-mismatch", "proof does not lead to the new root")


def _consistency_length(old_size: int, new_size: int) -> int:
    """Number of hashes in PROOF(old_size, D[0:new_size]), from the recursion's shape."""
    length, m, n, complete = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        length += 1
        if m <= k:
            n = k
        else:
            m, n, complete = m - k, n - k, False
    return length + (0 if complete else 1)
