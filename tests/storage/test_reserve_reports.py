"""Signed reserve reports in the store (migration 0005): kept by hash, named
beside the reserve they set, replays ignored, nothing written on a refusal."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from storage.errors import InvalidInputError, UnknownAssetError
from storage.schema import encode_amount
from storage.store import MIGRATIONS, ReserveRow, Store
from tests.storage.conftest import R

ZERO = bytes(32)


@dataclass(frozen=True)
class S:
    """A signed reserve update, as prover.messages.ReserveReportUpdate carries it."""

    seq: int
    asset: str
    amount: int
    as_of_ms: int
    note: bytes
    key_id: int = 7

    @property
    def report_hash(self) -> bytes:
        return hashlib.sha256(self.note).digest()


def test_signed_reports_are_kept_and_named(store: Store) -> None:
    a, b = S(1, "BTC", 5, 10, b"report a"), S(2, "ETH", 6, 11, b"report b")
    result = store.apply_reserve_reports("cold", [a, b])
    assert (len(result.applied), result.duplicates, result.last_seq) == (2, 0, 2)
    assert store.reserves() == [
        ReserveRow("BTC", "cold", 5, 10, 7, a.report_hash),
        ReserveRow("ETH", "cold", 6, 11, 7, b.report_hash),
    ]
    assert store.reserve_reports([a.report_hash, b.report_hash, ZERO]) == {
        a.report_hash: a.note,
        b.report_hash: b.note,
    }
    # a replay is ignored: the reserve keeps its report, nothing is added
    c = S(2, "BTC", 9, 12, b"report c")
    assert store.apply_reserve_reports("cold", [c]).duplicates == 1
    assert store.reserve_reports([c.report_hash]) == {}
    # a later report replaces it; the earlier one stays kept, for earlier epochs
    d = S(3, "BTC", 8, 13, b"report d")
    store.apply_reserve_reports("cold", [d])
    assert store.reserves()[0] == ReserveRow("BTC", "cold", 8, 13, 7, d.report_hash)
    assert set(store.reserve_reports([a.report_hash, d.report_hash])) == {
        a.report_hash,
        d.report_hash,
    }
    # a plain figure makes the source's reserve unattested again
    store.apply_reserves("cold", [R(4, "BTC", 1, 14)])
    assert store.reserves()[0] == ReserveRow("BTC", "cold", 1, 14, 0, ZERO)


@pytest.mark.parametrize(
    ("update", "error"),
    [
        (S(2, "DOGE", 5, 1, b"x"), UnknownAssetError),
        (S(2, "BTC", 5, 1, b""), InvalidInputError),
        (S(2, "BTC", 5, 1, b"x", key_id=-1), InvalidInputError),
    ],
)
def test_refused_reports_write_nothing(store: Store, update: S, error: type) -> None:
    with pytest.raises(error):
        store.apply_reserve_reports("cold", [S(1, "BTC", 1, 1, b"fine"), update])
    assert store.reserves() == []
    assert store.source_marks() == {}


def test_upgrade_keeps_reserves_as_unattested(db_url: str) -> None:
    """A reserve stored before 0005 reads back unattested; 0005 downgrades."""
    store = Store.open(db_url, migrate=False)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(text("INSERT INTO assets (id, decimals) VALUES ('BTC', 8)"))
        conn.execute(
            text(
                "INSERT INTO reserves (asset, source, amount, as_of_ms, seq)"
                " VALUES ('BTC', 'cold', :amount, 1, 1)"
            ),
            {"amount": encode_amount(5, store.dialect)},
        )
    store.close()
    with Store.open(db_url) as store:
        assert store.reserves() == [ReserveRow("BTC", "cold", 5, 1, 0, ZERO)]
        store.apply_reserve_reports("cold", [S(2, "BTC", 6, 2, b"signed")])
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            assert conn.execute(text("SELECT seq FROM reserves")).scalar() == 2
