"""The liabilities ledger: every user's balance of every asset, as sum trees. Pure.

One ``Ledger`` holds one salt period's view: a user index shared by all assets,
one commitment per user, and per asset a ``SumTree`` with the slot of each
holder. Updates are staged, then ``close_epoch`` applies them to the trees in
one batch per asset. A balance of 0 removes the user's leaf (the slot turns
back into padding and is not reused within the period).

Slots are handed out as updates are staged, in staging order: a user gets
the next slot of the asset's order with a non-zero amount staged while it
holds none, and holds none from a zero amount on. So where every holder
sits depends on the order of the updates alone, never on when a ``flush``
applied some of them. A tree's ``room`` is the slots its period has not
handed out yet; a holder staged when there is none waits for the close,
which rebuilds that tree one level higher (PROTOCOL §2.5).

A ledger built ``ahead`` of its period's first epoch (the next salt period,
catching up in the background) serves no proof before its first close: until
then a flush keeps nothing to undo, hashes the wide levels only and grows a
tree that runs out of room itself, so that nothing of the catching up is left
to that close but the top levels.

Commitments and trees are hashed by the ledger's ``SumTreeHasher``: the
hashing rules of the record version its roots go into (the current one's
unless given).

Invariant: for every asset, ``tree.total`` equals the sum of its holders'
balances, and holder ``u``'s leaf sits at ``slots[u]`` with commitment
``commitments[u]``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from prover.errors import NotRetained, ProverError
from prover.periods import SaltPeriod, SlotAllocator
from prover.sizing import CLOSE_NODES, MIN_HEIGHT, flush_levels, height_for, spare
from prover.tree import SumTree, Undo
from verifier.hashing import DIGEST_SIZE, HASHER, SumTreeHasher
from verifier.sumtree import PathStep

__all__ = ["AssetRoot", "Ledger", "UserProof"]

NO_SLOT = -1
WAITING = -2  # staged with no slot left in the tree's order: placed when it grows


@dataclass(frozen=True, slots=True)
class AssetRoot:
    """An asset's tree after an epoch: what goes into the epoch record."""

    asset: str
    height: int
    root: bytes
    total: int


@dataclass(frozen=True, slots=True)
class UserProof:
    """A user's leaves and paths in every tree that holds them."""

    user: str
    salt: bytes
    entries: tuple[tuple[str, int, int, tuple[PathStep, ...]], ...]  # asset, slot, balance, path


@dataclass(frozen=True, slots=True)
class _EpochUndo:
    """What the batches of one epoch overwrote, per asset and in order: the
    trees' ``Undo`` records, and the holders whose slot changed (user indices,
    their slots before)."""

    trees: dict[str, list[Undo]] = field(default_factory=dict)
    slots: dict[str, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]] = field(
        default_factory=dict
    )

    @property
    def nbytes(self) -> int:
        trees = sum(u.nbytes for undos in self.trees.values() for u in undos)
        slots = sum(a.nbytes + b.nbytes for moves in self.slots.values() for a, b in moves)
        return trees + slots


@dataclass
class _Book:
    """One asset: its tree, its holders' slots (by user index) in the tree and
    once the staged updates are applied, and its slot order.

    Invariants: ``staged[u]`` is ``slots[u]`` for every user with nothing
    staged; it is NO_SLOT exactly when the user's last staged amount is 0,
    and WAITING exactly for the users of ``waiting`` (in staging order)."""

    tree: SumTree
    slots: npt.NDArray[np.int64]
    staged: npt.NDArray[np.int64]
    allocator: SlotAllocator
    waiting: dict[int, None] = field(default_factory=dict)

    def fit(self, users: int) -> None:
        """Make room in ``slots`` and ``staged`` for ``users`` users, with
        more to spare so that new users do not copy them each time."""
        if len(self.slots) < users:
            more = np.full(spare(users) - len(self.slots), NO_SLOT, np.int64)
            self.slots = np.concatenate([self.slots, more])
            self.staged = np.concatenate([self.staged, more])

    def hand_out(self, rows: npt.NDArray[np.int64]) -> None:
        """Move ``staged`` past rows staged in order, each the user index given
        a non-zero amount, or its complement ``~index`` given 0: a row gives
        its user the next slot of the order if it holds none just before
        (WAITING if the order is used up); a zero amount takes it away."""
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
        count = min(len(getters), self.allocator.remaining)
        given = np.full(len(users), WAITING, np.int64)
        taken = self.allocator.take(count)
        assert taken is not None  # at most what remains
        given[getters[:count]] = taken
        # each user's last row decides: its last slot handed out, or the one held before
        source = np.maximum.accumulate(np.where(gets | first, np.arange(len(order)), 0))
        last = np.ones(len(order), bool)
        last[:-1] = first[1:]
        final = np.where(gets[source], given[order][source], before[source])
        final = np.where(nz, final, NO_SLOT)[last]
        who = by_user[last]
        if self.waiting or count < len(getters):
            for user in who[final != WAITING].tolist():
                self.waiting.pop(user, None)
            queued = np.isin(getters, order[last][final == WAITING])
            for user in users[getters[queued]].tolist():
                self.waiting.pop(user, None)  # waiting again: behind those before
                self.waiting[user] = None
        self.staged[who] = final


@dataclass
class Ledger:
    """All trees of one salt period; see the module docstring."""

    period: SaltPeriod
    users: dict[str, int] = field(default_factory=dict)
    user_ids: list[str] = field(default_factory=list)
    commitments: npt.NDArray[np.uint8] = field(
        default_factory=lambda: np.zeros((0, DIGEST_SIZE), np.uint8)
    )
    books: dict[str, _Book] = field(default_factory=dict)
    pending: dict[str, dict[int, int]] = field(default_factory=dict)  # asset: user: amount
    retain: int = 0  # earlier epochs whose proofs stay available
    retain_bytes: int = 512 << 20  # and at most this much memory for them
    history: deque[_EpochUndo] = field(default_factory=deque)
    history_bytes: int = 0
    epochs: int = 0  # close_epoch calls so far
    open: _EpochUndo = field(default_factory=_EpochUndo)  # batches since the last close
    epoch_rows: dict[str, int] = field(default_factory=dict)  # per asset, this epoch so far
    last_epoch_rows: dict[str, int] = field(default_factory=dict)  # per asset, the last one
    hasher: SumTreeHasher = HASHER  # commitments' and trees' hashing rules
    ahead: bool = False  # built ahead of its first epoch: see the module docstring
    grown: tuple[str, ...] = ()  # the assets whose tree the last close rebuilt a level higher
    # the buffer ``commitments`` is the start of, so new users append without a copy
    _commitment_room: npt.NDArray[np.uint8] = field(
        default_factory=lambda: np.zeros((0, DIGEST_SIZE), np.uint8), repr=False
    )

    @classmethod
    def build(
        cls,
        period: SaltPeriod,
        assets: Iterable[str],
        balances: Iterable[tuple[str, str, int]],
        hasher: SumTreeHasher = HASHER,
        room: Mapping[str, int] | None = None,
        room_share: float = 0.0,
    ) -> Ledger:
        """Build every tree from ``(user, asset, amount)`` rows (zero amounts skipped),
        hashed by ``hasher``; each at the smallest height >= ``height_for`` of
        its holders that leaves at least ``room[asset]`` free slots, and
        ``room_share`` times its holders."""
        ledger = cls(period, hasher=hasher)
        holdings: dict[str, tuple[list[int], list[int]]] = {a: ([], []) for a in assets}
        for user, asset, amount in balances:
            if amount:
                users, amounts = holdings[asset]
                users.append(ledger._index(user))
                amounts.append(amount)
        ledger._grow_commitments()
        wanted = room or {}
        for asset, (users, amounts) in holdings.items():
            free = max(wanted.get(asset, 0), math.ceil(len(users) * room_share))
            ledger._rebuild(
                asset, np.array(users, np.int64), np.array(amounts, np.uint64), room=free
            )
        return ledger

    # Staging and applying updates

    def stage(self, user: str, asset: str, amount: int) -> None:
        """Record ``user``'s new ``amount`` of ``asset`` for the next epoch (last one wins)."""
        self.stage_rows([(user, asset, amount)])

    def stage_rows(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """``stage`` each (user, asset, amount) of ``rows`` in order, or none of
        them if one names an unknown asset. The hot path of ingest: per row,
        the user's index, one store and one append, no Python call; each
        asset's slots are handed out for all its rows at once."""
        rows = list(rows)
        assets = {asset for _, asset, _ in rows}
        if unknown := assets.difference(self.books):
            raise ProverError(f"unknown asset {min(unknown)}")
        users = self.users
        # per asset: the pending updates, and each row's user index (~index for a zero)
        staged: dict[str, tuple[dict[int, int], list[int]]] = {
            asset: (self.pending.setdefault(asset, {}), []) for asset in assets
        }
        for user, asset, amount in rows:
            index = users.get(user)
            if index is None:
                index = self._index(user)
            changes, sequence = staged[asset]
            changes[index] = amount
            sequence.append(index if amount else ~index)
        for asset, (_, sequence) in staged.items():
            self.books[asset].hand_out(np.array(sequence, np.int64))

    @property
    def staged(self) -> int:
        """How many (user, asset) updates are staged."""
        return sum(map(len, self.pending.values()))

    def flush(self) -> None:
        """Apply the staged updates now, ahead of ``close_epoch``, so that the
        close has less left to hash. Proofs still show the last closed epoch:
        what the batch overwrote is kept until then. Updates that would need a
        tree rebuilt stay staged for ``close_epoch`` (``ahead``: the flush
        rebuilds it, and keeps nothing to undo).

        A flush hashes a tree's lower levels only (``_flush_levels``). The
        levels above, which every batch would rehash again, are hashed once,
        at the close. 100,000 updates into 1,000,000 holders, flushed in
        batches of 5,000: the close hashed 62,000 nodes (45 ms) instead of
        204,000 with every level left to it that the epoch's batches share,
        for 27% more hashing in all; flushing every level would leave it
        44,000 but hash 81% more (one run each, a 2-core Xeon VM)."""
        ahead, deferred = self.ahead, {}
        undo = None if ahead else self.open
        for asset, changes in self._take_pending().items():
            rows = CLOSE_NODES if ahead else self.last_epoch_rows.get(asset, 0)
            upto = flush_levels(self.books[asset].tree.height, rows)
            if not self._apply(asset, changes, undo, may_rebuild=ahead, upto=upto) and not ahead:
                deferred[asset] = changes
        self.pending = deferred

    def close_epoch(self) -> list[AssetRoot]:
        """Apply every staged update, one batch per asset; return all roots.
        While ``retain`` > 0, keep what the epoch overwrote for ``proof(user,
        age)``, for at most ``retain`` epochs in at most ``retain_bytes``."""
        undo, grown = self.open, []
        for asset, changes in self._take_pending().items():
            if not self._apply(asset, changes, undo, may_rebuild=True):
                grown.append(asset)
        for asset, book in self.books.items():  # flushed, with nothing staged since
            if book.tree.stale:
                book.tree.finish(undo.trees.setdefault(asset, []))
        self.last_epoch_rows, self.epoch_rows = self.epoch_rows, {}
        self.open = _EpochUndo()
        self.epochs += 1
        self.ahead = False
        self.grown = tuple(grown)
        if grown:  # older paths are gone with the old tree
            self.history.clear()
            self.history_bytes = 0
        elif self.retain:
            self.history.append(undo)
            self.history_bytes += undo.nbytes
        while self.history and (
            len(self.history) > self.retain or self.history_bytes > self.retain_bytes
        ):
            self.history_bytes -= self.history.popleft().nbytes
        return self.roots()

    def _take_pending(self) -> dict[str, dict[int, int]]:
        self._grow_commitments()
        pending, self.pending = self.pending, {}
        return pending

    def roots(self) -> list[AssetRoot]:
        return [
            AssetRoot(asset, b.tree.height, b.tree.root, b.tree.total)
            for asset, b in sorted(self.books.items())
        ]

    def room(self) -> dict[str, int]:
        """Per asset, the slots of its tree not handed out yet in this period:
        the new holders it takes before it must be rebuilt one level higher."""
        return {asset: b.allocator.remaining for asset, b in sorted(self.books.items())}

    def add_asset(self, asset: str) -> None:
        if asset not in self.books:
            self._rebuild(asset, np.zeros(0, np.int64), np.zeros(0, np.uint64))

    def _apply(
        self,
        asset: str,
        changes: dict[int, int],
        undo: _EpochUndo | None,
        may_rebuild: bool,
        upto: int | None = None,
    ) -> bool:
        """Apply one asset's changes, noting in ``undo`` (if any) what they
        overwrite. False if holders wait for a slot: then the tree was rebuilt
        one level higher with the changes (``may_rebuild``), or nothing changed."""
        book = self.books[asset]
        if book.waiting:  # this period's slot order is used up: one level higher
            if may_rebuild:
                self._rebuild_with(asset, changes)
            return False
        users = np.fromiter(changes.keys(), np.int64, len(changes))
        amounts = np.fromiter(changes.values(), np.uint64, len(changes))
        before, after = book.slots[users], book.staged[users]
        moved = before != after
        clear = moved & (before != NO_SLOT)
        keep = after != NO_SLOT  # exactly the non-zero amounts
        if undo is not None:
            undo.slots.setdefault(asset, []).append((users[moved], before[moved]))
        book.tree.apply(
            after[keep],
            self.commitments[users[keep]],
            amounts[keep],
            before[clear],
            None if undo is None else undo.trees.setdefault(asset, []),
            upto,
        )
        book.slots[users[moved]] = after[moved]
        self.epoch_rows[asset] = self.epoch_rows.get(asset, 0) + len(changes)
        return True

    def _rebuild_with(self, asset: str, changes: dict[int, int]) -> None:
        """Rebuild ``asset``'s tree one level higher with the changes applied:
        its holders in the order their slots were handed out, then those
        waiting, in staging order."""
        book = self.books[asset]
        holders = np.flatnonzero(book.staged >= 0)
        # in the order their slots were taken, not by user index: user indices
        # depend on which other assets a ledger holds (prover/pool.py)
        order = self.period.slot_order(asset, book.tree.height)
        taken = np.empty_like(order)
        taken[order] = np.arange(len(order))
        holders = holders[np.argsort(taken[book.staged[holders]], kind="stable")]
        everyone = np.concatenate([holders, np.fromiter(book.waiting, np.int64)])
        current = book.tree.amounts()
        amounts = [
            changes[u] if u in changes else int(current[book.slots[u]]) for u in everyone.tolist()
        ]
        self._rebuild(
            asset, everyone, np.array(amounts, np.uint64), min_height=book.tree.height + 1
        )

    def _rebuild(
        self,
        asset: str,
        users: npt.NDArray[np.int64],
        amounts: npt.NDArray[np.uint64],
        min_height: int = MIN_HEIGHT,
        room: int = 0,
    ) -> None:
        height = max(min_height, height_for(len(users), room))
        allocator = SlotAllocator(self.period.slot_order(asset, height))
        taken = allocator.take(len(users))
        assert taken is not None  # height_for leaves room for every holder
        slots = np.full(len(self.users), NO_SLOT, np.int64)
        slots[users] = taken
        tree = SumTree.build(
            asset,
            height,
            self.period.padding_key(asset),
            taken,
            self.commitments[users],
            amounts,
            hasher=self.hasher,
        )
        self.books[asset] = _Book(tree, slots, slots.copy(), allocator)

    # Users

    def _index(self, user: str) -> int:
        index = self.users.get(user)
        if index is None:
            index = self.users[user] = len(self.user_ids)
            self.user_ids.append(user)
        return index

    def _grow_commitments(self) -> None:
        """Compute the commitment of every user added since the last call."""
        known = len(self.commitments)
        if known == len(self.users):
            return
        commit, salt = self.hasher.commitment, self.period.salt
        fresh = np.frombuffer(
            b"".join(commit(u, salt(u)) for u in self.user_ids[known:]), np.uint8
        ).reshape(-1, DIGEST_SIZE)
        need = known + len(fresh)
        if need > len(self._commitment_room):  # a bigger buffer, with room to spare
            room = np.empty((spare(need), DIGEST_SIZE), np.uint8)
            room[:known] = self.commitments
            self._commitment_room = room
        self._commitment_room[known:need] = fresh
        self.commitments = self._commitment_room[:need]  # rows past it are never read

    # Proofs

    def balance(self, user: str, asset: str) -> int:
        index = self.users.get(user)
        book = self.books[asset]
        if index is None or index >= len(book.slots) or book.slots[index] == NO_SLOT:
            return 0
        return book.tree.leaf(int(book.slots[index]))[1]

    def proof(self, user: str, age: int = 0) -> UserProof | None:
        """The user's paths in the trees as of the last ``close_epoch`` (``age``
        0) or the one ``age`` epochs before it, whatever was flushed since;
        None if they held nothing then.

        Raises:
            NotRetained: that epoch is not retained, or the ledger is ``ahead``
                of its first epoch.
        """
        if self.ahead:
            raise NotRetained("these trees have closed no epoch yet")
        if not 0 <= age <= self.retained:
            raise NotRetained(f"the trees of {age} epochs ago are not retained")
        index = self.users.get(user)
        if index is None:
            return None
        since = (list(self.history)[len(self.history) - age :] if age else []) + [self.open]
        entries = []
        for asset, book in sorted(self.books.items()):
            slot = int(book.slots[index]) if index < len(book.slots) else NO_SLOT
            moves = [m for epoch in since for m in epoch.slots.get(asset, [])]
            for moved, before in moves:  # the oldest change after that epoch knows the slot
                found = np.flatnonzero(moved == index)
                if len(found):
                    slot = int(before[found[0]])
                    break
            if slot == NO_SLOT:
                continue
            undo = [u for epoch in since for u in epoch.trees.get(asset, [])]
            _, amount = book.tree.leaf(slot, undo)
            path = tuple(PathStep(h, s) for h, s in book.tree.path(slot, undo))
            entries.append((asset, slot, amount, path))
        if not entries:
            return None
        return UserProof(user, self.period.salt(user), tuple(entries))

    @property
    def retained(self) -> int:
        """How many epochs before the last one ``proof`` can still serve."""
        return min(len(self.history), max(0, self.epochs - 1))
