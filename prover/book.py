"""One asset's tree in a ledger and where its holders sit, now and once the
staged updates are applied (prover/ledger.py). Pure.

Slots are handed out as updates are staged, in staging order (PROTOCOL
§2.5): ``hand_out`` gives a user the next slot of its part's order when a
non-zero amount is staged while it holds none, and takes it away with a
zero amount. The tree changes only when the ledger applies the updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from prover.periods import SlotAllocator
from prover.sizing import spare
from prover.tree import SumTree

__all__ = ["NO_SLOT", "WAITING", "Book"]

I64 = npt.NDArray[np.int64]
NO_SLOT = -1
WAITING = -2  # staged with no slot left in its part's order: placed when the tree grows


@dataclass
class Book:
    """One asset: its tree, its holders' slots (by user index) in the tree and
    once the staged updates are applied, and each part's slot order.

    Invariants: ``staged[u]`` is ``slots[u]`` for every user with nothing
    staged; it is NO_SLOT exactly when the user's last staged amount is 0,
    and WAITING exactly for the users of ``waiting`` (in staging order)."""

    tree: SumTree
    slots: npt.NDArray[np.int64]
    staged: npt.NDArray[np.int64]
    allocators: list[SlotAllocator]  # per part held
    waiting: dict[int, None] = field(default_factory=dict)

    def fit(self, users: int) -> None:
        """Make room in ``slots`` and ``staged`` for ``users`` users, with
        more to spare so that new users do not copy them each time."""
        if len(self.slots) < users:
            more = np.full(spare(users) - len(self.slots), NO_SLOT, np.int64)
            self.slots = np.concatenate([self.slots, more])
            self.staged = np.concatenate([self.staged, more])

    def hand_out(self, rows: npt.NDArray[np.int64], part_of: Callable[[I64], I64]) -> None:
        """Move ``staged`` past rows staged in order, each the user index given
        a non-zero amount, or its complement ``~index`` given 0: a row gives
        its user the next slot of its part's order (``part_of`` users: the
        index of their part's allocator) if it holds none just before
        (WAITING if that order is used up); a zero amount takes it away."""
        nonzero = rows >= 0
        users = np.where(nonzero, rows, ~rows)
        self.fit(int(users.max()) + 1)
        held = self.staged[users]  # each row's user's slot before these rows
        if nonzero.all() and (held != NO_SLOT).all():  # holders staying holders
            return
        order = np.argsort(users, kind="stable")  # rows by user, in staging order
        by_user, nz, before = users[order], nonzero[order], held[order]
        first = np.ones(len(order), bool)
        np.not_equal(by_user[1:], by_user[:-1], out=first[1:])
        holds = np.where(first, before != NO_SLOT, np.concatenate([[False], nz[:-1]]))
        gets = nz & ~holds  # rows that hand out a slot
        getters = np.sort(order[gets])  # in staging order
        given = np.full(len(users), WAITING, np.int64)
        parts = part_of(users[getters]) if len(self.allocators) > 1 else np.zeros(len(getters), int)
        short = False
        for part in np.unique(parts).tolist():
            mine = getters[parts == part]
            allocator = self.allocators[part]
            count = min(len(mine), allocator.remaining)
            taken = allocator.take(count)
            assert taken is not None  # at most what remains
            given[mine[:count]] = taken
            short |= count < len(mine)
        # each user's last row decides: its last slot handed out, or the one held before
        source = np.maximum.accumulate(np.where(gets | first, np.arange(len(order)), 0))
        last = np.ones(len(order), bool)
        last[:-1] = first[1:]
        final = np.where(gets[source], given[order][source], before[source])
        final = np.where(nz, final, NO_SLOT)[last]
        who = by_user[last]
        if self.waiting or short:
            for user in who[final != WAITING].tolist():
                self.waiting.pop(user, None)
            queued = np.isin(users[getters], who[final == WAITING])
            for user in users[getters[queued]].tolist():
                self.waiting.pop(user, None)  # waiting again: behind those before
                self.waiting[user] = None
        self.staged[who] = final
