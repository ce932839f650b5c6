"""An RFC 9162 reference, written for the storage tests from the RFC's text and
kept deliberately literal (recursive definitions, step-numbered verifiers), so
it shares no code with storage/ or verifier/.

§2.1.1   MTH: the Merkle Tree Hash of a list of inputs.
§2.1.3.1 PATH: inclusion proofs.          §2.1.3.2 verify_inclusion.
§2.1.4.1 PROOF/SUBPROOF: consistency.     §2.1.4.2 verify_consistency.

Hashes: HASH = SHA-256; a leaf is HASH(0x00 || d); a node HASH(0x01 || l || r);
the empty list HASH(). Sizes and indices count from 0, as in the RFC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def HASH(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(entry: bytes) -> bytes:
    return HASH(b"\x00" + entry)


def node_hash(left: bytes, right: bytes) -> bytes:
    return HASH(b"\x01" + left + right)


def largest_power_of_two_smaller_than(n: int) -> int:
    """k < n <= 2k (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


# §2.1.1 -- over leaf hashes rather than entries, which is what a log stores:
# MTH of a one-entry list is the leaf hash itself.


def mth(hashes: Sequence[bytes]) -> bytes:
    n = len(hashes)
    if n == 0:
        return HASH(b"")
    if n == 1:
        return hashes[0]
    k = largest_power_of_two_smaller_than(n)
    return node_hash(mth(hashes[:k]), mth(hashes[k:n]))


# §2.1.3.1


def path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) for 0 <= m < n."""
    n = len(hashes)
    assert 0 <= m < n
    if n == 1:
        return []
    k = largest_power_of_two_smaller_than(n)
    if m < k:
        return [*path(m, hashes[:k]), mth(hashes[k:n])]
    return [*path(m - k, hashes[k:n]), mth(hashes[:k])]


# §2.1.4.1


def proof(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for 0 < m < n."""
    return subproof(m, hashes, True)


def subproof(m: int, hashes: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if b else [mth(hashes)]
    k = largest_power_of_two_smaller_than(n)
    if m <= k:
        return [*subproof(m, hashes[:k], b), mth(hashes[k:n])]
    return [*subproof(m - k, hashes[k:n], False), mth(hashes[:k])]


# §2.1.3.2


def verify_inclusion(
    leaf_index: int, tree_size: int, inclusion_path: Sequence[bytes], hash_: bytes, root: bytes
) -> bool:
    """True if ``inclusion_path`` proves that ``hash_`` (a leaf hash) is leaf
    ``leaf_index`` of the tree of ``tree_size`` leaves whose root is ``root``."""
    # 1. leaf_index >= tree_size fails
    if leaf_index >= tree_size:
        return False
    # 2.
    fn, sn = leaf_index, tree_size - 1
    # 3.
    r = hash_
    # 4.
    for p in inclusion_path:
        # a.
        if sn == 0:
            return False
        # b.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # c.
        fn >>= 1
        sn >>= 1
    # 5.
    return sn == 0 and r == root


# §2.1.4.2


def verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path_: Sequence[bytes]
) -> bool:
    """True if ``path_`` proves the tree of ``second`` leaves (root
    ``second_hash``) extends the tree of ``first`` (root ``first_hash``),
    0 < first < second."""
    if not 0 < first < second:
        return False
    consistency_path = list(path_)
    # 1.
    if not consistency_path:
        return False
    # 2. first an exact power of 2
    if first & (first - 1) == 0:
        consistency_path.insert(0, first_hash)
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    if fn & 1:
        while fn & 1:
            fn >>= 1
            sn >>= 1
    # 5.
    fr = sr = consistency_path[0]
    # 6.
    for c in consistency_path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    return fr == first_hash and sr == second_hash and sn == 0
