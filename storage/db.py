"""The database under a store: engine set-up, migrations, transactions and the
dialect's few differences, shared by every part of ``Store``.

SQLite (one file, WAL, synchronous=FULL, owner-only) by default; PostgreSQL by
URL, same code. Invariants every part relies on:

- ``transaction()`` commits whole or rolls back whole; database errors leave
  it as ``StorageError`` (``ConstraintError`` for integrity violations),
  storage errors and a caller's own exceptions pass through unchanged;
- ``transaction(write=True)`` takes SQLite's write lock at BEGIN (``BEGIN
  IMMEDIATE``), so a writer never has to upgrade a read lock and two writers
  cannot interleave; on PostgreSQL writers serialise on the row or advisory
  locks their part takes (``advisory_lock``);
- a password never appears in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from storage.checks import check_int
from storage.errors import ConstraintError, InvalidInputError, StorageError

__all__ = [
    "APPEND_LOCK",
    "CHUNK",
    "FOLD_LOCK",
    "JOURNAL_LOCK",
    "MIGRATIONS",
    "Database",
    "check_chunk_size",
    "open_engine",
]

MIGRATIONS = Path(__file__).parent / "migrations"
CHUNK = 50_000  # default rows per chunk of the bulk paths
# PostgreSQL advisory lock keys
MIGRATION_LOCK = 0x50524F56  # migrating
APPEND_LOCK = 0x50524F57  # appending an epoch
JOURNAL_LOCK = 0x50524F58  # appending to the balance journal
FOLD_LOCK = 0x50524F59  # folding it


class Database:
    """An engine and the transactions every part of the store runs in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def migrate(self) -> None:
        """Apply the Alembic migrations up to head (one writer at a time)."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.transaction(write=True) as conn:
            self.advisory_lock(conn, MIGRATION_LOCK)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        """Close the engine's connections (the store is unusable after)."""
        self.engine.dispose()

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction: committed if the body returns, rolled back if it
        raises. Database errors become StorageError (ConstraintError for
        integrity violations); storage errors and a callback's own exceptions
        pass through unchanged."""
        with self._transaction({"solvency_write": True} if write else {}) as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """One read transaction whose statements all see one snapshot of the
        database: any SQLite transaction (WAL) from its first read; REPEATABLE
        READ on PostgreSQL. Errors as in ``transaction``."""
        repeatable = {"isolation_level": "REPEATABLE READ"}
        with self._transaction(repeatable if self.dialect == "postgresql" else {}) as conn:
            yield conn

    @contextmanager
    def _transaction(self, options: dict[str, Any]) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if options:
                    conn = conn.execution_options(**options)
                with conn.begin():
                    yield conn
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise self._translate(exc) from exc

    def advisory_lock(self, conn: Connection, key: int) -> None:
        """On PostgreSQL, hold advisory lock ``key`` until ``conn``'s transaction
        ends; on SQLite nothing (a write transaction holds the database's lock)."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def insert(self, table: Any) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which has ``on_conflict_do_update``."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    @staticmethod
    def cursor(conn: Connection) -> Any:
        """The driver's cursor on ``conn`` (inside its transaction), for the bulk paths."""
        return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

    @property
    def _dbapi_error(self) -> type[Exception]:
        error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        return error

    def _translate(self, exc: Exception) -> StorageError:
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        integrity = getattr(self.engine.dialect.loaded_dbapi, "IntegrityError", ())
        if isinstance(exc, IntegrityError) or isinstance(orig, integrity):
            detail = str(orig).strip().splitlines()
            return ConstraintError(f"constraint violated: {' / '.join(detail)}")
        return StorageError(f"database error: {orig}")


def open_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL), not yet migrated.
    On SQLite: WAL, synchronous=FULL, foreign keys, busy timeout, and a
    missing file created owner-only."""
    try:
        parsed = make_url(url)
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        shown = url.split("@")[-1]  # never a password in an error message
        raise StorageError(f"cannot open database ...@{shown}: {exc}") from None
    if engine.dialect.name == "sqlite":
        _create_private(parsed.database)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def check_chunk_size(chunk_size: int) -> None:
    check_int(chunk_size, "chunk_size")
    if chunk_size < 1:
        raise InvalidInputError("chunk_size must be at least 1")


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _sqlite_on_begin), so
    # SELECTs run inside the transaction and writers can take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an ack must survive power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("solvency_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_private(database: str | None) -> None:
    """Create a missing SQLite file owner-only (0600) before SQLite opens it:
    it holds every balance and the salts. SQLite gives its -wal and -shm
    files the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create database file {database}: {exc.strerror}") from None
