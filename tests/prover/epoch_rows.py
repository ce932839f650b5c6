"""What each epoch of a sharded prover took of the acknowledged batches, to
feed a single-process ``Ledger`` the same rows and compare."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from storage.store import Store

Row = tuple[str, str, int]


def rows_by_epoch(
    store: Store, stream: str, acks: list[tuple[int, dict[str, Any]]]
) -> Iterator[tuple[int, list[Row]]]:
    """``(epoch, rows)`` for every epoch of ``store``'s log in order: the rows
    of the balance batches ``acks`` (each a commit's stream sequence and its
    message) committed after the previous epoch's cut and up to this one's,
    in commit order, without the updates a source sent again (at or below
    its mark, as the prover skips them)."""
    acks = sorted(acks, key=lambda a: a[0])
    marks: dict[str, int] = {}
    after = 0
    for number in range(store.log_size()):
        cut = store.epoch_marks(number).get(("stream", stream), 0)
        rows: list[Row] = []
        for seq, message in acks:
            if after < seq <= cut:
                mark = marks.get(message["source"], -1)
                rows += [
                    (u["user"], u["asset"], u["amount"])
                    for u in message["updates"]
                    if u["seq"] > mark
                ]
                marks[message["source"]] = max(mark, message["updates"][-1]["seq"])
        yield number, rows
        after = cut
