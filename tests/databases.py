"""The databases tests run on: a fresh SQLite file (WAL) and, when
SOLVENCY_TEST_POSTGRES_URL is set (as .ci/run does), a fresh schema of that
PostgreSQL server, reached through ``search_path`` and dropped afterwards, so
runs and tests cannot see each other's tables. Without the variable the
PostgreSQL cases skip, saying so."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

POSTGRES_URL = os.environ.get("SOLVENCY_TEST_POSTGRES_URL", "")
SKIP_PG = (
    "PostgreSQL tests need SOLVENCY_TEST_POSTGRES_URL "
    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test); it is not set"
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


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
