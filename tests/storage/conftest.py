"""Each storage test runs on a fresh SQLite file (WAL) and, when
SOLVENCY_TEST_POSTGRES_URL is set (as .ci/run does), on a fresh schema of that
PostgreSQL server, reached through ``search_path`` and dropped afterwards, so
runs and tests cannot see each other's tables. Without the variable the
PostgreSQL cases skip, saying so."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from storage.store import Store

POSTGRES_URL = os.environ.get("SOLVENCY_TEST_POSTGRES_URL", "")
SKIP_PG = (
    "PostgreSQL tests need SOLVENCY_TEST_POSTGRES_URL "
    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test); it is not set"
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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


def balances(store: Store) -> dict[tuple[str, str], int]:
    return {(u, a): m for chunk in store.iter_balances(7) for u, a, m in chunk}


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in POSTGRES_URL else "?"
        try:
            yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


@contextmanager
def backend_url(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'prover.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(SKIP_PG)
    with postgres_schema_url() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    with backend_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store with assets BTC (8 decimals) and ETH (18)."""
    s = Store.open(db_url)
    s.ensure_asset("BTC", 8)
    s.ensure_asset("ETH", 18)
    yield s
    s.close()
