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

A tree split into parts for a sharded prover (``router``, docs/SCALING.md)
hands out each part's slots in an order of its own, to the users the router
puts in that part, and grows as a whole once any part is full. A ledger
holds every part (``part`` None: the whole trees, as the single process
does, the same for any number of parts), or one part of every tree: a
shard's, whose trees are subtrees with their root at level ``bits``, and
whose growth heights the coordinator decides (``growth``, ``close_epoch``).

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

from prover.book import NO_SLOT, Book
from prover.errors import NotRetained, ProverError
from prover.periods import SaltPeriod, SlotAllocator
from prover.routing import SINGLE, Router
from prover.sizing import CLOSE_NODES, flush_levels, grown_height, height_for_parts, spare
from prover.tree import SumTree
from prover.undo import EpochUndo, leaves_as_of
from prover.users import UserIndex
from verifier.hashing import DIGEST_SIZE, HASHER, SumTreeHasher
from verifier.sumtree import PathStep

__all__ = ["AssetRoot", "Ledger", "UserProof"]


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


@dataclass
class Ledger:
    """All trees of one salt period; see the module docstring."""

    period: SaltPeriod
    users: UserIndex = field(default_factory=UserIndex)
    commitments: npt.NDArray[np.uint8] = field(
        default_factory=lambda: np.zeros((0, DIGEST_SIZE), np.uint8)
    )
    books: dict[str, Book] = field(default_factory=dict)
    pending: dict[str, dict[int, int]] = field(default_factory=dict)  # asset: user: amount
    retain: int = 0  # earlier epochs whose proofs stay available
    retain_bytes: int = 512 << 20  # and at most this much memory for them
    history: deque[EpochUndo] = field(default_factory=deque)
    history_bytes: int = 0
    epochs: int = 0  # close_epoch calls so far
    open: EpochUndo = field(default_factory=EpochUndo)  # batches since the last close
    epoch_rows: dict[str, int] = field(default_factory=dict)  # per asset, this epoch so far
    last_epoch_rows: dict[str, int] = field(default_factory=dict)  # per asset, the last one
    hasher: SumTreeHasher = HASHER  # commitments' and trees' hashing rules
    ahead: bool = False  # built ahead of its first epoch: see the module docstring
    grown: tuple[str, ...] = ()  # the assets whose tree the last close rebuilt a level higher
    router: Router = SINGLE  # users to the parts of every tree
    part: int | None = None  # the one part held (a shard's), or None: every part
    # the buffer ``commitments`` is the start of, so new users append without a copy
    _commitment_room: npt.NDArray[np.uint8] = field(
        default_factory=lambda: np.zeros((0, DIGEST_SIZE), np.uint8), repr=False
    )
    # each user's part, by user index, for the first ``_parts_known`` users
    _user_parts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, np.int64), repr=False
    )
    _parts_known: int = field(default=0, repr=False)

    @classmethod
    def build(
        cls,
        period: SaltPeriod,
        assets: Iterable[str],
        balances: Iterable[tuple[str, str, int]],
        hasher: SumTreeHasher = HASHER,
        room: Mapping[str, int] | None = None,
        room_share: float = 0.0,
        router: Router = SINGLE,
        part: int | None = None,
        heights: Mapping[str, int] | None = None,
    ) -> Ledger:
        """Build every tree from ``(user, asset, amount)`` rows (zero amounts skipped),
        hashed by ``hasher``; each at the smallest height >= ``height_for`` of
        its holders that leaves at least ``room[asset]`` free slots, and
        ``room_share`` times its holders (``height_for_parts`` of the largest
        part, split by ``router``), or at ``heights[asset]``. A shard's ledger
        (``part``) is given the rows of its users only (``router``'s), at the
        ``heights`` of the whole trees, which only the coordinator knows.

        Raises:
            ProverError: a tree too small for its holders.
        """
        ledger = cls(period, hasher=hasher, router=router, part=part)
        holdings: dict[str, tuple[list[int], list[int]]] = {a: ([], []) for a in assets}
        for user, asset, amount in balances:
            if amount:
                users, amounts = holdings[asset]
                users.append(ledger._index(user))
                amounts.append(amount)
        ledger._grow_commitments()
        wanted = room or {}
        for asset, (users, amounts) in holdings.items():
            indices = np.array(users, np.int64)
            if heights is not None and asset in heights:
                height = heights[asset]
            else:
                free = max(wanted.get(asset, 0), math.ceil(len(users) * room_share))
                height = height_for_parts(ledger._largest_part(indices), router.bits, free)
            ledger._rebuild(asset, indices, np.array(amounts, np.uint64), height)
        return ledger

    @classmethod
    def restore(
        cls,
        period: SaltPeriod,
        trees: Mapping[str, tuple[int, int]],
        holdings: Iterable[tuple[str, str, int, int]],
        *,
        router: Router = SINGLE,
        part: int | None = None,
        hasher: SumTreeHasher = HASHER,
        retain: int = 0,
    ) -> Ledger:
        """A ledger of one slot order per tree (a shard's, or one of a single
        part) as it stood after a close: ``trees``, each asset's whole height
        and how many slots of its order were handed out; ``holdings``, every
        holder as (user, asset, amount, slot in the whole tree). The same
        trees, slots and next slots handed out; no earlier epoch's proofs.

        Raises:
            ProverError: a holding of an asset not in ``trees``, of 0, of a
                user of another part, at a slot not handed out, or two at one slot.
        """
        if part is None and router.bits:
            raise ValueError("only a shard's ledger, or one of a single part, is restored")
        ledger = cls(period, hasher=hasher, router=router, part=part, retain=retain)
        held: dict[str, tuple[list[int], list[int], list[int]]] = {a: ([], [], []) for a in trees}
        for user, asset, amount, slot in holdings:
            new = user not in ledger.users
            if asset not in held or not amount or (new and part not in (None, router.shard(user))):
                raise ProverError(f"{user!r} holds {amount} {asset}: not a holding of this ledger")
            for column, value in zip(held[asset], (ledger._index(user), amount, slot), strict=True):
                column.append(value)
        ledger._grow_commitments()
        for asset, (users, amounts, slots) in held.items():
            placed = (np.array(slots, np.int64), trees[asset][1])
            users_a, amounts_a = np.array(users, np.int64), np.array(amounts, np.uint64)
            ledger._rebuild(asset, users_a, amounts_a, trees[asset][0], placed)
        return ledger

    # Staging and applying updates

    def stage(self, user: str, asset: str, amount: int) -> None:
        """Record ``user``'s new ``amount`` of ``asset`` for the next epoch (last one wins)."""
        self.stage_rows([(user, asset, amount)])

    def stage_rows(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """``stage`` each (user, asset, amount) of ``rows`` in order, or none of
        them if one names an unknown asset. The hot path of ingest: the users'
        numbers in one call (``UserIndex.numbers``), then each asset's rows as
        arrays, its slots handed out for all of them at once."""
        rows = list(rows)
        if not rows:
            return
        users, assets, amounts = zip(*rows, strict=True)
        distinct = set(assets)
        if unknown := distinct.difference(self.books):
            raise ProverError(f"unknown asset {min(unknown)}")
        names = sorted(distinct)
        numbers = self.users.numbers(list(users))
        amounts_a = np.array(amounts, np.uint64)
        code = {asset: i for i, asset in enumerate(names)}
        codes = np.fromiter(map(code.__getitem__, assets), np.int64, len(rows))
        by_asset = np.argsort(codes, kind="stable")  # each asset's rows, in staging order
        ends = np.cumsum(np.bincount(codes, minlength=len(names))).tolist()
        for asset, begin, end in zip(names, [0, *ends[:-1]], ends, strict=True):
            mine = by_asset[begin:end]
            users_a, held = numbers[mine], amounts_a[mine]
            changes = zip(users_a.tolist(), held.tolist(), strict=True)
            self.pending.setdefault(asset, {}).update(changes)
            # each row's user, or its complement for a zero: see Book.hand_out
            self.books[asset].hand_out(np.where(held != 0, users_a, ~users_a), self._parts_of)

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
            rebuild = ahead and self.part is None  # a shard's heights come with a close
            if not self._apply(asset, changes, undo, rebuild, upto) and not rebuild:
                deferred[asset] = changes
        self.pending = deferred

    def close_epoch(self, heights: Mapping[str, int] | None = None) -> list[AssetRoot]:
        """Apply every staged update, one batch per asset; return all roots.
        A tree with holders waiting for a slot grows, to ``heights[asset]``
        if given (a shard's must be: the coordinator's answer to ``growth``).
        While ``retain`` > 0, keep what the epoch overwrote for ``proof(user,
        age)``, for at most ``retain`` epochs in at most ``retain_bytes``."""
        undo, grown, heights = self.open, [], heights or {}
        pending = self._take_pending()
        for asset, height in heights.items():  # a shard's part grows with the others
            if asset not in pending and height != self.full_height(asset):
                pending[asset] = {}
        for asset, changes in pending.items():
            if not self._apply(asset, changes, undo, may_rebuild=True, height=heights.get(asset)):
                grown.append(asset)
        for asset, book in self.books.items():  # flushed, with nothing staged since
            if book.tree.stale:
                book.tree.finish(undo.trees.setdefault(asset, []))
        self.last_epoch_rows, self.epoch_rows = self.epoch_rows, {}
        self.open = EpochUndo()
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
        """Every asset's tree, or a shard's part of it (a subtree, its height)."""
        return [
            AssetRoot(asset, b.tree.height, b.tree.root, b.tree.total)
            for asset, b in sorted(self.books.items())
        ]

    def room(self) -> dict[str, int]:
        """Per asset, the slots of its tree not handed out yet in this period:
        the new holders it takes before it must be rebuilt one level higher
        (of a tree in parts: as many as its fullest part leaves, in each)."""
        return {
            asset: min(a.remaining for a in b.allocators) * len(b.allocators)
            for asset, b in sorted(self.books.items())
        }

    def growth(self) -> dict[str, int]:
        """The assets whose trees must grow at the close (holders wait for a
        slot), each with the holders of its fullest part that has some waiting:
        what the coordinator's heights come from (``grown_height``)."""
        wanted = {}
        for asset, book in self.books.items():
            if book.waiting:
                holders = np.flatnonzero(book.staged != NO_SLOT)
                parts = self._parts_of(holders)
                waiting = np.unique(self._parts_of(np.fromiter(book.waiting, np.int64)))
                wanted[asset] = int(np.bincount(parts)[waiting].max())
        return wanted

    def full_height(self, asset: str) -> int:
        """The height of ``asset``'s whole tree (a shard holds a subtree of it)."""
        height = self.books[asset].tree.height
        return height if self.part is None else height + self.router.bits

    def add_asset(self, asset: str, height: int | None = None) -> None:
        """A new asset, no holders: its tree at ``height`` (a shard's is given)."""
        if asset not in self.books:
            none = np.zeros(0, np.int64)
            if height is None:
                height = height_for_parts(0, self.router.bits)
            self._rebuild(asset, none, np.zeros(0, np.uint64), height)

    def _parts_of(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The part of each user index: the index of its slot order in a
        book's ``allocators`` (0 in a ledger that holds one part)."""
        if self.part is not None or not self.router.bits:
            return np.zeros(len(users), np.int64)
        known, need = self._parts_known, len(self.users)
        if known < need:
            if need > len(self._user_parts):
                room = np.zeros(spare(need), np.int64)
                room[:known] = self._user_parts[:known]
                self._user_parts = room
            shard = self.router.shard
            self._user_parts[known:need] = [shard(u) for u in self.users.ids(known)]
            self._parts_known = need
        return self._user_parts[users]

    def _largest_part(self, users: npt.NDArray[np.int64]) -> int:
        if not len(users):
            return 0
        return int(np.bincount(self._parts_of(users)).max())

    def _apply(
        self,
        asset: str,
        changes: dict[int, int],
        undo: EpochUndo | None,
        may_rebuild: bool,
        upto: int | None = None,
        height: int | None = None,
    ) -> bool:
        """Apply one asset's changes, noting in ``undo`` (if any) what they
        overwrite. False if holders wait for a slot: then the tree was rebuilt
        higher (at ``height`` if given) with the changes (``may_rebuild``),
        or nothing changed."""
        book = self.books[asset]
        if book.waiting or (height is not None and height != self.full_height(asset)):
            if may_rebuild:  # a slot order used up (here or in another part): higher
                self._rebuild_with(asset, changes, height)
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

    def _rebuild_with(self, asset: str, changes: dict[int, int], height: int | None) -> None:
        """Rebuild ``asset``'s tree higher with the changes applied: its
        holders in the order their slots were handed out, then those
        waiting, in staging order; at ``height``, or ``grown_height``."""
        if height is None:
            if self.part is not None:
                raise ProverError(f"a shard's tree of {asset} grows at a height it is given")
            height = grown_height(self.full_height(asset), self.growth()[asset], self.router.bits)
        book = self.books[asset]
        holders = np.flatnonzero(book.staged >= 0)
        # in the order their slots were taken, not by user index: user indices
        # depend on which other assets a ledger holds (prover/pool.py)
        taken = np.empty(book.tree.capacity, np.int64)
        for allocator in book.allocators:
            taken[allocator.order] = np.arange(len(allocator.order))
        holders = holders[np.argsort(taken[book.staged[holders]], kind="stable")]
        everyone = np.concatenate([holders, np.fromiter(book.waiting, np.int64)])
        current = book.tree.amounts()
        amounts = [
            changes[u] if u in changes else int(current[book.slots[u]]) for u in everyone.tolist()
        ]
        self._rebuild(asset, everyone, np.array(amounts, np.uint64), height)

    def _rebuild(
        self,
        asset: str,
        users: npt.NDArray[np.int64],
        amounts: npt.NDArray[np.uint64],
        height: int,
        placed: tuple[npt.NDArray[np.int64], int] | None = None,
    ) -> None:
        """``asset``'s tree of ``height`` (the whole tree's) with ``users``
        given slots in this order, each from its part's order; or with
        ``placed``, (their slots in the whole tree, how many slots of the
        one order were handed out): ``restore``'s."""
        bits = self.router.bits
        parts = range(1 << bits) if self.part is None else [self.part]
        held = height if self.part is None else height - bits
        first = 0 if self.part is None else self.part << held
        allocators = [
            SlotAllocator(self.period.slot_order(asset, height, bits, p) - first) for p in parts
        ]
        if placed is None:
            taken = np.empty(len(users), np.int64)
            where = self._parts_of(users) if len(allocators) > 1 else np.zeros(len(users), np.int64)
            for index, allocator in enumerate(allocators):
                mine = where == index
                slots = allocator.take(int(mine.sum()))
                if slots is None:
                    raise ProverError(f"{asset}: too many holders for a tree of height {height}")
                taken[mine] = slots
        else:  # restored: each holder at a slot of the order handed out already
            taken, given = placed[0] - first, allocators[0].take(placed[1])
            handed = np.zeros((1 << held) + 1, bool)  # the last one: every slot outside
            handed[given if given is not None else []] = True
            outside = (taken < 0) | (taken >= 1 << held)
            if given is None or not handed[np.where(outside, -1, taken)].all():
                raise ProverError(f"{asset}: a holder at a slot not handed out")
        slots = np.full(len(self.users), NO_SLOT, np.int64)
        slots[users] = taken
        tree = SumTree.build(
            asset,
            held,
            self.period.padding_key(asset),
            taken,
            self.commitments[users],
            amounts,
            hasher=self.hasher,
            first_slot=first,
        )
        self.books[asset] = Book(tree, slots, slots.copy(), allocators)

    # Users

    def _index(self, user: str) -> int:
        return self.users.number(user)

    def _grow_commitments(self) -> None:
        """Compute the commitment of every user added since the last call."""
        known = len(self.commitments)
        if known == len(self.users):
            return
        commit, salt = self.hasher.commitment, self.period.salt
        fresh = np.frombuffer(
            b"".join(commit(u, salt(u)) for u in self.users.ids(known)), np.uint8
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
        entries = leaves_as_of(self.books, index, since)
        if not entries:
            return None
        return UserProof(user, self.period.salt(user), tuple(entries))

    @property
    def retained(self) -> int:
        """How many epochs before the last one ``proof`` can still serve."""
        return min(len(self.history), max(0, self.epochs - 1))
