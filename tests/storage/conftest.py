"""Storage fixtures: each test of ``store`` runs on both backends (``db_url``,
tests/databases.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from storage.store import Store
from tests.databases import BACKENDS, backend_url


@dataclass(frozen=True)
class B:
    """A balance update, as the prover's ingest messages carry them."""

    seq: int
    user: str
    asset: str
    amount: int


@dataclass(frozen=True)
class R:
    """A reserve update."""

    seq: int
    asset: str
    amount: int
    as_of_ms: int


def sign(size: int, root: bytes) -> bytes:
    """A stand-in for the prover's note signer: deterministic text of size and root."""
    return f"test.example/log\n{size}\n{root.hex()}\n".encode()


def body(leaf: bytes) -> bytes:
    """What an epoch row keeps beside its log leaf: a stand-in for the record
    the prover stores, its header (the leaf) and more."""
    return leaf + b" and its asset entries"


def balances(store: Store) -> dict[tuple[str, str], int]:
    return {(u, a): m for chunk in store.iter_balances(7) for u, a, m in chunk}


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store with assets BTC (8 decimals) and ETH (18)."""
    s = Store.open(db_url)
    s.ensure_asset("BTC", 8)
    s.ensure_asset("ETH", 18)
    yield s
    s.close()


@pytest.fixture(scope="module", params=BACKENDS)
def shared_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One store per test module and backend (assets BTC and ETH), for property
    tests whose examples keep apart by using fresh source and user names."""
    with backend_url(request.param, tmp_path_factory.mktemp("shared")) as url:
        store = Store.open(url)
        store.ensure_asset("BTC", 8)
        store.ensure_asset("ETH", 18)
        yield store
        store.close()
