"""The C extension prover._sumhash against hashlib and verifier.hashing.

tests/prover/test_tree.py runs every tree test with and without it.
"""

from __future__ import annotations

import hashlib
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import prover.tree
from prover.tree import c_hashing
from tests.prover.test_speedups import built
from verifier.hashing import HASHER, NODE_MESSAGE_SIZE, SumTreeHasher, node_hash

ROW = NODE_MESSAGE_SIZE  # 97: node tag || left hash, sum || right hash, sum


@pytest.fixture(scope="module")
def c() -> ModuleType:
    return built(prover.tree._C_HASHING)


def records(row: bytes) -> list[tuple[bytes, int]]:
    """The two (hash, sum) records of a row, after its tag."""
    return [(row[at : at + 32], int.from_bytes(row[at + 32 : at + 48])) for at in (1, 1 + 48)]


def level(rng: np.random.Generator, rows: int, sum_bits: int = 95) -> np.ndarray:
    """``rows`` rows of a level: the node tag, random hashes, sums below 2**sum_bits."""
    out = rng.integers(0, 256, (rows, ROW), np.uint8)
    out[:, 0] = HASHER.node_tag
    for r in range(rows):
        for at in (1 + 32, 1 + 48 + 32):
            total = int.from_bytes(rng.bytes(16)) >> (128 - sum_bits)
            out[r, at : at + 16] = np.frombuffer(total.to_bytes(16), np.uint8)
    return out


def expected_parent(below: np.ndarray, p: int) -> tuple[bytes, int]:
    (lh, ls), (rh, rs) = records(below[p].tobytes())
    return node_hash(lh, ls, rh, rs), ls + rs


@given(hnp.arrays(np.uint8, st.tuples(st.integers(0, 12), st.integers(0, 200))))
@settings(max_examples=80, deadline=None)
def test_sha256_rows_is_hashlib_row_by_row(c: ModuleType, rows: np.ndarray) -> None:
    digests = c.sha256_rows(rows)
    assert digests == b"".join(hashlib.sha256(r.tobytes()).digest() for r in rows)


def test_sha256_rows_of_many_rows_lets_other_threads_run(c: ModuleType) -> None:
    rows = np.random.default_rng(1).integers(0, 256, (3000, 41), np.uint8)
    assert c.sha256_rows(rows) == b"".join(hashlib.sha256(r.tobytes()).digest() for r in rows)


@given(st.integers(1, 40), st.data())
@settings(max_examples=80, deadline=None)
def test_hash_parents_is_the_protocols_node_hash(
    c: ModuleType, m: int, data: st.DataObject
) -> None:
    """Each named parent becomes node_hash of its children with their sums
    added; every other byte of the level above stays as it was."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    below = level(rng, m)
    above = rng.integers(0, 256, ((m + 1) // 2, ROW), np.uint8)
    parents = sorted(data.draw(st.sets(st.integers(0, m - 1))))
    expected, before = above.copy(), []
    for p in parents:
        digest, total = expected_parent(below, p)
        at = 1 + 48 * (p & 1)
        before.append(expected[p >> 1, at : at + 48].tobytes())
        expected[p >> 1, at : at + 48] = np.frombuffer(digest + total.to_bytes(16), np.uint8)
    old = np.zeros(len(parents), "V48")
    assert c.hash_parents(below, above, np.array(parents, np.int64), old) == len(parents)
    assert np.array_equal(above, expected)
    assert [o.tobytes() for o in old] == before  # each parent's record before, in order


def test_hash_parents_of_a_whole_level_and_sums_past_64_bits(c: ModuleType) -> None:
    rng = np.random.default_rng(2)
    below = level(rng, 2048, sum_bits=127)  # both halves of the sums in play
    below[0, 1 + 32 : 1 + 48] = np.frombuffer((2**64 - 1).to_bytes(16), np.uint8)
    below[0, 1 + 48 + 32 :] = np.frombuffer((1).to_bytes(16), np.uint8)  # a carry
    above = np.zeros((1024, ROW), np.uint8)
    assert c.hash_parents(below, above) == 2048  # None: every node, the GIL released
    for p in range(2048):
        assert records(above[p >> 1].tobytes())[p & 1] == expected_parent(below, p)
    assert records(above[0].tobytes())[0][1] == 2**64


def test_the_root_level_takes_one_row(c: ModuleType) -> None:
    below = level(np.random.default_rng(3), 1)
    root = np.zeros((1, ROW), np.uint8)
    c.hash_parents(below, root, np.array([0], np.int64))
    assert records(root.tobytes())[0] == expected_parent(below, 0)


@pytest.mark.parametrize(
    ("below", "above", "parents", "error", "message"),
    [
        ((4, ROW), (2, ROW), [0, 4], IndexError, "parent 4 is outside 0..3"),
        ((4, ROW), (2, ROW), [-1], IndexError, "parent -1 is outside 0..3"),
        ((4, ROW), (1, ROW), None, ValueError, "above: 1 rows cannot hold 4 nodes"),
        ((4, 96), (2, ROW), None, ValueError, "below: rows of 97 bytes, not 96"),
        ((4, ROW), (2, 98), None, ValueError, "above: rows of 97 bytes, not 98"),
        ((4, ROW), (2, ROW), np.array([0.0]), ValueError, "parents: a 1-D int64 array"),
        ((4, ROW), (2, ROW), np.array([[0]]), ValueError, "parents: a 1-D int64 array"),
        ((4, ROW), (2, ROW), np.array([0], np.int32), ValueError, "parents: a 1-D int64"),
    ],
)
def test_hash_parents_refuses_bad_arguments_before_writing(
    c: ModuleType,
    below: tuple[int, int],
    above: tuple[int, int],
    parents: list[int] | np.ndarray | None,
    error: type[Exception],
    message: str,
) -> None:
    upper = np.full(above, 7, np.uint8)
    nodes = np.array(parents, np.int64) if isinstance(parents, list) else parents
    with pytest.raises(error, match=message):
        c.hash_parents(np.zeros(below, np.uint8), upper, nodes)
    assert (upper == 7).all()


def test_room_for_the_records_before_must_fit_the_parents(c: ModuleType) -> None:
    upper = np.full((2, ROW), 7, np.uint8)
    with pytest.raises(ValueError, match="old: 96 bytes, not 48 per parent"):
        c.hash_parents(np.zeros((4, ROW), np.uint8), upper, np.array([0]), np.zeros(2, "V48"))
    assert (upper == 7).all()


def test_buffers_of_the_wrong_kind_are_refused(c: ModuleType) -> None:
    rows = np.zeros((4, ROW), np.uint8)
    with pytest.raises(ValueError, match="rows: a 2-D array of bytes is needed"):
        c.sha256_rows(b"a message")
    with pytest.raises(ValueError, match="rows: a 2-D array of bytes"):
        c.sha256_rows(np.zeros((2, 3), np.uint16))
    with pytest.raises((ValueError, BufferError), match="contiguous"):
        c.sha256_rows(np.zeros((4, 8), np.uint8)[:, ::2])
    read_only = np.zeros((2, ROW), np.uint8)
    read_only.flags.writeable = False
    with pytest.raises((ValueError, BufferError), match=r"read-only|writable"):
        c.hash_parents(rows, read_only)
    with pytest.raises(TypeError):
        c.hash_parents(rows)


def test_the_extension_hashes_for_sha256_only(c: ModuleType) -> None:
    assert c_hashing(HASHER) is c
    assert c_hashing(SumTreeHasher(hashlib.sha3_256, 0x63, 0x6C, 0x70, 0x6E)) is None
