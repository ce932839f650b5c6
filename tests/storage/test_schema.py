"""Schema and migrations, and exact amounts on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from storage.errors import InvalidAmountError
from storage.schema import Base, decode_amount, encode_amount
from storage.store import MAX_RESERVE, MIGRATIONS, Store
from tests.storage.conftest import B, R, balances
from verifier.hashing import MAX_BALANCE

TABLES = {
    "alembic_version",
    "assets",
    "balance_journal",
    "balances",
    "epoch_marks",
    "epoch_reserves",
    "epochs",
    "reserve_reports",
    "reserves",
    "salt_periods",
    "shard_deltas",
    "shard_holdings",
    "shard_states",
    "signing_keys",
    "source_marks",
    "witness_cosignatures",
    "writer_leases",
}


def test_the_migrations_create_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_open_is_idempotent_and_at_head(db_url: str) -> None:
    for _ in range(2):
        with Store.open(db_url) as store, store.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0009"


def test_upgrade_keeps_data_written_at_the_first_revision(db_url: str) -> None:
    """A database made by revision 0001 (the first release's schema) is
    upgraded in place on open; its rows survive, and downgrading works too."""
    store = Store.open(db_url, migrate=False)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(text("INSERT INTO assets (id, decimals) VALUES ('BTC', 8)"))
    store.close()
    with Store.open(db_url) as store:
        assert [a.id for a in store.assets()] == ["BTC"]
        store.apply_balances("core", [B(1, "alice", "BTC", MAX_BALANCE)])
        assert balances(store) == {("alice", "BTC"): MAX_BALANCE}
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0001")
            assert "slot_assignments" not in inspect(conn).get_table_names()
            command.downgrade(config, "base")
            assert inspect(conn).get_table_names() == ["alembic_version"]


def test_the_unused_slot_table_is_dropped_and_restored_on_downgrade(db_url: str) -> None:
    """0006 drops slot_assignments with any rows an older release left in it;
    downgrading to 0005 recreates it, empty, with its constraints."""
    store = Store.open(db_url, migrate=False)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005")
        conn.execute(text("INSERT INTO assets (id, decimals) VALUES ('BTC', 8)"))
        conn.execute(text("INSERT INTO salt_periods VALUES (1, 0, :s)"), {"s": bytes(32)})
        conn.execute(text("INSERT INTO slot_assignments VALUES (1, 'BTC', 'alice', 0)"))
    store.close()
    with Store.open(db_url) as store, store.engine.begin() as conn:
        assert "slot_assignments" not in inspect(conn).get_table_names()
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
        assert conn.execute(text("SELECT count(*) FROM slot_assignments")).scalar() == 0
        conn.execute(text("INSERT INTO slot_assignments VALUES (1, 'BTC', 'alice', 0)"))
        with pytest.raises(IntegrityError), conn.begin_nested():  # slot 0 of BTC is taken
            conn.execute(text("INSERT INTO slot_assignments VALUES (1, 'BTC', 'bob', 0)"))
        command.upgrade(config, "head")


def test_sqlite_is_a_wal_file_with_foreign_keys(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'p.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / "p.db").exists()


# Amounts: a 16-byte big-endian BLOB on SQLite, NUMERIC(39, 0) on PostgreSQL


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_amount_codec_round_trips(value: int) -> None:
    blob = encode_amount(value, "sqlite")
    assert isinstance(blob, bytes) and len(blob) == 16
    assert decode_amount(blob) == value and decode_amount(memoryview(blob)) == value
    assert decode_amount(encode_amount(value, "postgresql")) == value


@given(st.integers(min_value=0, max_value=2**96), st.integers(min_value=0, max_value=2**96))
def test_amount_blobs_sort_as_numbers(a: int, b: int) -> None:
    assert (encode_amount(a, "sqlite") < encode_amount(b, "sqlite")) == (a < b)


@pytest.mark.parametrize("value", [-1, 2**128, 1.0, "5", True, None])
def test_amount_codec_refuses_what_it_cannot_store(value: object) -> None:
    with pytest.raises(InvalidAmountError):
        encode_amount(value, "sqlite")  # type: ignore[arg-type]


EDGES = [0, 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]


def test_amounts_round_trip_exactly_through_the_database(store: Store) -> None:
    store.apply_balances("core", [B(i + 1, f"u{i}", "BTC", v) for i, v in enumerate(EDGES)])
    reserves = [2**64 - 1, 2**64, 2**95 + 3, MAX_RESERVE]
    store.apply_reserves(
        "cold",
        [
            R(i + 1, a, v, 7)
            for i, (a, v) in enumerate(zip(["BTC", "ETH", "BTC", "ETH"], reserves, strict=True))
        ],
    )
    got = balances(store)
    assert got == {(f"u{i}", "BTC"): v for i, v in enumerate(EDGES) if v}  # zero = no balance
    assert all(type(v) is int for v in got.values())
    assert {r.asset: r.amount for r in store.reserves()} == {"BTC": 2**95 + 3, "ETH": MAX_RESERVE}
    with store.engine.connect() as conn:  # the column holds the exact value, not a float
        raw = conn.execute(text("SELECT amount FROM balances WHERE user_id = 'u5'")).scalar()
    assert decode_amount(raw) == 2**64 - 1
