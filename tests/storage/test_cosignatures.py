"""Witness cosignatures of the epochs' checkpoints (migration 0004)."""

from __future__ import annotations

import pytest

from storage.cosignatures import CosignatureRow
from storage.errors import ConstraintError, InvalidInputError
from storage.store import Store
from tests.storage.conftest import body, sign


def line(name: str, tag: str = "AAAA") -> str:
    return f"\u2014 {name} {tag}\n"


def test_cosignatures_are_stored_once_per_epoch_and_witness(store: Store) -> None:
    for n in range(3):
        store.append_epoch(n, b"r%d" % n, body(b"r%d" % n), sign, created_ms=n)
    store.add_cosignatures(
        [
            CosignatureRow(0, "w1", 7, line("w1")),
            CosignatureRow(0, "w2", 2**32 - 1, line("w2")),
            CosignatureRow(2, "w1", 7, line("w1", "BBBB")),
        ]
    )
    # again, with another line for a stored (epoch, witness, key id): the first stays
    store.add_cosignatures([CosignatureRow(0, "w1", 7, line("w1", "CCCC"))])
    store.add_cosignatures([])
    assert store.cosignatures(0, 2) == [
        CosignatureRow(0, "w1", 7, line("w1")),
        CosignatureRow(0, "w2", 2**32 - 1, line("w2")),
        CosignatureRow(2, "w1", 7, line("w1", "BBBB")),
    ]
    assert store.cosignatures(1, 1) == []
    assert store.last_cosigned([("w1", 7), ("w2", 2**32 - 1), ("w1", 8), ("w3", 7)]) == {
        ("w1", 7): 2,
        ("w2", 2**32 - 1): 0,
    }


def test_cosignatures_need_their_epoch_and_one_signature_line(store: Store) -> None:
    store.append_epoch(0, b"r0", body(b"r0"), sign, created_ms=0)
    with pytest.raises(ConstraintError):
        store.add_cosignatures([CosignatureRow(1, "w1", 7, line("w1"))])
    for row, problem in [
        (CosignatureRow(0, "w1", 2**32, line("w1")), "key id"),
        (CosignatureRow(-1, "w1", 7, line("w1")), "epoch"),
        (CosignatureRow(0, "w 1", 7, line("w 1")), "white space"),
        (CosignatureRow(0, "w+1", 7, line("w+1")), "not a key name"),
        (CosignatureRow(0, "w1", 7, line("w2")), "not one signature line by w1"),
        (CosignatureRow(0, "w1", 7, line("w1") + line("w1")), "not one signature line"),
        (CosignatureRow(0, "w1", 7, line("w1").rstrip("\n")), "not one signature line"),
    ]:
        with pytest.raises(InvalidInputError, match=problem):
            store.add_cosignatures([CosignatureRow(0, "w1", 7, line("w1")), row])
    assert store.cosignatures(0, 0) == []  # nothing of a refused batch is written
