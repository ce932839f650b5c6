"""The log of epochs: pymerkle's hashing is RFC 9162's, and the store's
inclusion and consistency proofs are RFC 9162's, checked against the
reference verifier written from the RFC (tests/storage/rfc9162_reference.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import NotFoundError
from storage.log import CACHE_THRESHOLD, EpochLog
from storage.store import Store
from tests.databases import BACKENDS, backend_url
from tests.storage import rfc9162_reference as ref
from tests.storage.conftest import body, sign

LOG_SIZE = 300  # leaves in the shared log below: crosses 256, and the 64-leaf cache threshold


def leaf(n: int) -> bytes:
    return b"epoch header %d" % n


# Known answers: the published RFC 6962 test tree (the same hashing as RFC 9162)
KAT_ENTRIES = [
    bytes.fromhex(x)
    for x in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
KAT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_the_reference_gives_the_known_roots() -> None:
    hashes = [ref.leaf_hash(e) for e in KAT_ENTRIES]
    assert [ref.mth(hashes[:n]).hex() for n in range(1, 9)] == KAT_ROOTS
    assert ref.mth([]) == hashlib.sha256(b"").digest()


def test_the_reference_verifiers_accept_their_proofs_and_nothing_else() -> None:
    hashes = [ref.leaf_hash(b"%d" % i) for i in range(21)]
    for n in range(1, 21):
        root = ref.mth(hashes[:n])
        for m in range(n):
            p = ref.path(m, hashes[:n])
            assert ref.verify_inclusion(m, n, p, hashes[m], root)
            assert not ref.verify_inclusion(m, n, p, hashes[(m + 1) % 20], root)
            assert not ref.verify_inclusion(m, n, p, hashes[m], ref.mth(hashes[: n + 1]))
            assert not ref.verify_inclusion(n, n, p, hashes[m], root)
            if p:
                assert not ref.verify_inclusion(m, n, p[:-1], hashes[m], root)
        for m in range(1, n):
            p = ref.proof(m, hashes[:n])
            assert ref.verify_consistency(m, n, ref.mth(hashes[:m]), root, p)
            assert not ref.verify_consistency(m, n, ref.mth(hashes[: m - 1]), root, p)
            assert not ref.verify_consistency(m, n, ref.mth(hashes[:m]), root, [*p, root])
            assert not ref.verify_consistency(m, n, ref.mth(hashes[:m]), root, p[:-1])


def test_pymerkle_is_pinned_to_rfc9162_hashing() -> None:
    log = EpochLog()
    assert (log.algorithm, log.security) == ("sha256", True)
    for data in KAT_ENTRIES:
        assert log.leaf_hash(data) == hashlib.sha256(b"\x00" + data).digest()
        assert log.leaf_hash(data) == ref.leaf_hash(data)
    left, right = ref.leaf_hash(b"l"), ref.leaf_hash(b"r")
    assert log.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert log.hash_empty() == ref.mth([])


def test_the_log_has_the_known_roots(store: Store) -> None:
    assert store.log_root() == ref.mth([])  # the empty log
    for n, entry in enumerate(KAT_ENTRIES):
        store.append_epoch(n, entry, body(entry), sign, created_ms=n)
        assert store.log_root().hex() == KAT_ROOTS[n]
    assert [store.log_root(n).hex() for n in range(1, 9)] == KAT_ROOTS


# A log of LOG_SIZE epochs per backend, shared by the tests below


@pytest.fixture(scope="module", params=BACKENDS)
def log_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    with backend_url(request.param, tmp_path_factory.mktemp("log")) as url:
        store = Store.open(url)
        for n in range(LOG_SIZE):
            store.append_epoch(n, leaf(n), body(leaf(n)), sign, created_ms=n)
        yield store
        store.close()


HASHES = [ref.leaf_hash(leaf(n)) for n in range(LOG_SIZE)]


def test_every_proof_of_small_logs_matches_the_reference(log_store: Store) -> None:
    for n in range(1, 34):
        root = log_store.log_root(n)
        assert root == ref.mth(HASHES[:n])
        for m in range(n):
            proof = log_store.inclusion_proof(m, n)
            assert proof == ref.path(m, HASHES[:n])
            assert ref.verify_inclusion(m, n, proof, HASHES[m], root)
        for m in range(1, n):
            proof = log_store.consistency_proof(m, n)
            assert proof == ref.proof(m, HASHES[:n])
            assert ref.verify_consistency(m, n, log_store.log_root(m), root, proof)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_proofs_verify_with_the_reference(log_store: Store, data: st.DataObject) -> None:
    new = data.draw(st.integers(1, LOG_SIZE), label="new size")
    old = data.draw(st.integers(1, new), label="old size")
    index = data.draw(st.integers(0, new - 1), label="leaf index")
    root = log_store.log_root(new)
    assert root == ref.mth(HASHES[:new])
    inclusion = log_store.inclusion_proof(index, new)
    assert ref.verify_inclusion(index, new, inclusion, HASHES[index], root)
    consistency = log_store.consistency_proof(old, new)
    if old == new:
        assert consistency == []
    else:
        assert consistency == ref.proof(old, HASHES[:new])
        assert ref.verify_consistency(old, new, log_store.log_root(old), root, consistency)


def test_pymerkles_inclusion_proofs_are_accepted_by_the_reference(log_store: Store) -> None:
    """The store's inclusion proofs are pymerkle's own paths (0-based, without
    the leaf hash pymerkle puts first); check that claim directly."""
    with log_store.engine.connect() as conn, log_store.log.bound(conn) as log:
        for index, size in [(0, 1), (5, 6), (6, 7), (63, 64), (64, 65), (100, 300), (299, 300)]:
            theirs = log.prove_inclusion(index + 1, size)  # pymerkle counts leaves from 1
            assert theirs.path[0] == HASHES[index]
            path = list(theirs.path[1:])
            assert ref.verify_inclusion(index, size, path, HASHES[index], ref.mth(HASHES[:size]))
            assert path == log_store.inclusion_proof(index, size)


def test_proofs_out_of_range_are_refused(log_store: Store) -> None:
    for call in [
        lambda: log_store.inclusion_proof(3, LOG_SIZE + 1),
        lambda: log_store.inclusion_proof(5, 5),
        lambda: log_store.inclusion_proof(-1, 5),
        lambda: log_store.consistency_proof(1, LOG_SIZE + 1),
        lambda: log_store.consistency_proof(6, 5),
        lambda: log_store.log_root(LOG_SIZE + 1),
        lambda: log_store.epoch(LOG_SIZE),
    ]:
        with pytest.raises(NotFoundError):
            call()
    assert log_store.consistency_proof(0, 7) == [] and log_store.consistency_proof(7, 7) == []


def test_a_fresh_process_computes_the_same_proofs(log_store: Store) -> None:
    """A new store (empty subroot cache) agrees with the warm one."""
    with Store.open(str(log_store.engine.url.render_as_string(hide_password=False))) as cold:
        assert cold.log.cache_entries() == 0
        assert cold.log_size() == LOG_SIZE
        assert cold.log_root() == log_store.log_root() == ref.mth(HASHES)
        assert cold.log.cache_entries() >= LOG_SIZE // CACHE_THRESHOLD
        for old, new in [(1, 300), (64, 300), (129, 257), (200, 299)]:
            assert cold.consistency_proof(old, new) == log_store.consistency_proof(old, new)


def test_many_sizes_have_consistent_checkpoints(tmp_path: Path) -> None:
    """Each epoch's checkpoint signs the root of the log that includes it."""
    with backend_url("sqlite", tmp_path) as url, Store.open(url) as store:
        for n in range(70):
            checkpoint = store.append_epoch(n, leaf(n), body(leaf(n)), sign, created_ms=n)
            assert checkpoint == sign(n + 1, ref.mth(HASHES[: n + 1]))
            assert store.epoch(n).checkpoint == checkpoint
