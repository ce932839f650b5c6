"""Each storage test runs on a fresh SQLite file and, when SOLVENCY_TEST_POSTGRES_URL
is set (as .ci/run does), on a fresh schema of that PostgreSQL server."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from storage.store import Store

POSTGRES_URL = os.environ.get("SOLVENCY_TEST_POSTGRES_URL", "")
SKIP_PG = "PostgreSQL tests need SOLVENCY_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"


def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'prover.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(SKIP_PG)
    yield from postgres_schema_url()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    s.ensure_asset("BTC", 8)
    s.ensure_asset("ETH", 18)
    yield s
    s.close()
