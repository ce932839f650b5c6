"""The balance updates bench_stream offers, and the tree work they imply. Pure (no I/O).

``Traffic`` states a model; ``Producers`` draws each producer's batches from
it and keeps the ledger's holdings (which account holds which asset) so that
a share of updates creates holder-asset pairs and a share removes them;
``epoch_work`` buckets acknowledged batches into epochs and counts the
distinct leaves they touch and the hashes that takes (``tree_hashes``) in
trees whose heights follow the prover's rule (``Trees``, docs/PROTOCOL.md
§2.5).

Accounts are ``acct{i}``, ``0 <= i < accounts``; a leaf is the pair
(account, asset), numbered ``account * assets + asset``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from prover.rotation import START_ROOM_SHARE
from prover.sizing import height_for

__all__ = [
    "WORK_MODEL",
    "Batch",
    "EpochWork",
    "Offered",
    "Producers",
    "Traffic",
    "TrafficError",
    "Trees",
    "add_arguments",
    "asset_ids",
    "epoch_work",
    "from_args",
    "message",
    "offered",
    "parse_skew",
    "tree_hashes",
]

NAMES = ("BTC", "ETH", "USDT", "SOL")
STRIDE = 7919  # the stride pattern's multiplier
MAX_AMOUNT = 10**12  # balances are drawn from 1 .. MAX_AMOUNT - 1
REDRAWS = 8  # tries to find an account that can take an update of the drawn kind

WORK_MODEL = (
    "tree work: leaves = distinct holder-asset leaves an epoch changed (each acked batch"
    " counted in the first epoch closed at or after its ack); hash/upd = those leaves plus"
    " their distinct ancestors on every level, expected for uniformly random slots in trees"
    " of the prover's heights (PROTOCOL 2.5), per update; grown = trees rebuilt one level"
    " higher (the rebuild's hashes not counted)"
)

Ints = npt.NDArray[np.int64]


class TrafficError(ValueError):
    """A traffic model that cannot be drawn (bad shares, sizes or skew)."""


def asset_ids(count: int) -> tuple[str, ...]:
    """The bench's asset ids: BTC, ETH, USDT, SOL, then A5, A6, ..."""
    return tuple(NAMES[i] if i < len(NAMES) else f"A{i + 1}" for i in range(count))


def parse_skew(text: str) -> float | None:
    """``uniform`` (None) or ``zipf:S`` (the exponent S > 0)."""
    if text == "uniform":
        return None
    kind, _, exponent = text.partition(":")
    try:
        s = float(exponent)
    except ValueError:
        s = math.nan
    if kind != "zipf" or not s > 0 or math.isinf(s):
        raise TrafficError(f"skew {text!r} is not 'uniform' or 'zipf:S' with S > 0")
    return s


@dataclass(frozen=True)
class Traffic:
    """A traffic model. ``ledger``: each producer draws accounts from its own
    range (``disjoint``) or from all of them (``shared``), uniformly or by a
    Zipf law of exponent ``zipf`` over a shuffled rank order; a share
    ``new_holders`` of updates gives an account an asset it did not hold, a
    share ``removals`` sets a held balance to 0, the rest change a held
    balance. Each account starts holding each asset with probability
    ``holding``. ``stride``: the old pattern, every producer sending account
    ``(seq * 7919) % accounts`` with the same seqs, first asset only, every
    account holding it and nothing else."""

    pattern: Literal["ledger", "stride"] = "ledger"
    accounts: int = 1_000_000
    assets: int = 4
    producers: int = 2
    partition: Literal["disjoint", "shared"] = "disjoint"
    new_holders: float = 0.10
    removals: float = 0.02
    zipf: float | None = None
    holding: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pattern not in ("ledger", "stride"):
            raise TrafficError(f"traffic {self.pattern!r} is not 'ledger' or 'stride'")
        if self.partition not in ("disjoint", "shared"):
            raise TrafficError(f"partition {self.partition!r} is not 'disjoint' or 'shared'")
        if self.assets < 1 or self.producers < 1 or self.accounts < self.producers:
            raise TrafficError("give at least 1 asset, 1 producer and an account per producer")
        shares = (self.new_holders, self.removals, self.holding)
        if not all(0 <= x <= 1 for x in shares) or self.new_holders + self.removals > 1:
            raise TrafficError("shares must lie in 0..1, new holders and removals 1 at most")
        if self.zipf is not None and not self.zipf > 0:
            raise TrafficError(f"zipf exponent {self.zipf} is not > 0")

    def describe(self) -> str:
        """The model in one line."""
        ids = asset_ids(self.assets)
        if self.pattern == "stride":
            return (
                f"stride traffic (the old pattern): {self.producers} producers all sending"
                f" acct{{(seq * {STRIDE}) % {self.accounts:,}}} with the same seqs, asset"
                f" {ids[0]} only, every account holding {ids[0]} alone"
            )
        whose = (
            f"each on its own 1/{self.producers} of {self.accounts:,} accounts"
            if self.partition == "disjoint"
            else f"each drawing independently from all {self.accounts:,} accounts"
        )
        skew = "uniformly" if self.zipf is None else f"by Zipf(s={self.zipf:g}) activity"
        return (
            f"ledger traffic: {self.producers} independent producers {whose}, {skew};"
            f" {self.assets} assets ({', '.join(ids)}), each account starting with each"
            f" at p={self.holding:g}; {self.new_holders:.0%} of updates give an account an"
            f" asset it did not hold, {self.removals:.0%} set a held balance to 0, the rest"
            " change a held balance"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``Traffic`` (``--accounts`` and ``--producers`` included)."""
    parser.add_argument("--accounts", type=int, default=Traffic.accounts)
    parser.add_argument("--producers", type=int, default=Traffic.producers)
    parser.add_argument("--traffic", choices=("ledger", "stride"), default=Traffic.pattern)
    parser.add_argument("--partition", choices=("disjoint", "shared"), default=Traffic.partition)
    parser.add_argument("--assets", type=int, default=Traffic.assets)
    parser.add_argument("--new-holders", type=float, default=Traffic.new_holders)
    parser.add_argument("--removals", type=float, default=Traffic.removals)
    parser.add_argument("--holding", type=float, default=Traffic.holding)
    parser.add_argument("--skew", default="uniform", help="uniform or zipf:S")
    parser.add_argument("--seed", type=int, default=Traffic.seed)


def from_args(args: argparse.Namespace) -> Traffic:
    """The ``Traffic`` of options added by ``add_arguments``; TrafficError if invalid."""
    return Traffic(
        args.traffic, args.accounts, args.assets, args.producers, args.partition,
        args.new_holders, args.removals, parse_skew(args.skew), args.holding, args.seed,
    )  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """One producer's batch: ``accounts[i]`` gets ``amounts[i]`` of asset index
    ``assets[i]``. ``leaves`` are the distinct leaves it changes (sorted),
    ``created`` and ``removed`` per asset index the holder-asset pairs it adds
    and ends."""

    accounts: Ints
    assets: Ints
    amounts: Ints
    leaves: Ints
    created: Ints
    removed: Ints

    def __len__(self) -> int:
        return len(self.accounts)


def message(source: str, first_seq: int, batch_id: int, batch: Batch, ids: Sequence[str]) -> str:
    """The ingest message (PROTOCOL §11.1) of ``batch``, seqs from ``first_seq``,
    written from a template: a quarter of the CPU of ``json.dumps`` of dicts."""
    seqs = range(first_seq, first_seq + len(batch))
    columns = (batch.accounts.tolist(), batch.assets.tolist(), batch.amounts.tolist())
    rows = zip(seqs, *columns, strict=True)
    updates = ",".join(
        [f'{{"seq":{s},"user":"acct{u}","asset":"{ids[a]}","amount":{m}}}' for s, u, a, m in rows]
    )
    return f'{{"type":"balances","id":{batch_id},"source":"{source}","updates":[{updates}]}}'


class Producers:
    """Draws every producer's batches of a ``Traffic`` and keeps the holdings
    they leave. Invariant: ``holdings[u, a]`` is whether account ``u`` holds
    asset ``a`` after every batch drawn so far, applied in the order drawn."""

    def __init__(self, traffic: Traffic) -> None:
        t = self.traffic = traffic
        rng = np.random.default_rng([t.seed, 0])
        if t.pattern == "stride":
            self.holdings = np.zeros((t.accounts, t.assets), bool)
            self.holdings[:, 0] = True
        else:
            self.holdings = rng.random((t.accounts, t.assets)) < t.holding
        self._rngs = [np.random.default_rng([t.seed, 1, p]) for p in range(t.producers)]
        cuts = [p * t.accounts // t.producers for p in range(t.producers + 1)]
        self._ranges = [
            (cuts[p], cuts[p + 1]) if t.partition == "disjoint" else (0, t.accounts)
            for p in range(t.producers)
        ]
        self._zipf: dict[tuple[int, int], tuple[npt.NDArray[np.float64], Ints]] = {}
        if t.zipf is not None:
            for lo, hi in set(self._ranges):
                weights = np.arange(1, hi - lo + 1, dtype=np.float64) ** -t.zipf
                cdf = np.cumsum(weights)
                self._zipf[lo, hi] = (cdf / cdf[-1], lo + rng.permutation(hi - lo))

    def holders(self) -> Ints:
        """Holders per asset index now."""
        holders: Ints = self.holdings.sum(0).astype(np.int64)
        return holders

    def pairs(self) -> tuple[Ints, Ints]:
        """The (account, asset index) pairs held now, in account order."""
        accounts, assets = np.nonzero(self.holdings)
        return accounts.astype(np.int64), assets.astype(np.int64)

    def range_of(self, producer: int) -> tuple[int, int]:
        """The accounts ``lo .. hi - 1`` that ``producer`` draws from."""
        return self._ranges[producer]

    def batch(self, producer: int, first_seq: int, size: int) -> Batch:
        """The next batch of ``size`` updates of ``producer``, whose first seq is
        ``first_seq`` (the stride pattern derives its accounts from the seqs)."""
        if self.traffic.pattern == "stride":
            seqs = np.arange(first_seq, first_seq + size, dtype=np.int64)
            zeros = np.zeros(size, np.int64)
            return self._settle((seqs * STRIDE) % self.traffic.accounts, zeros, seqs)
        t, rng = self.traffic, self._rngs[producer]
        accounts = self._draw(producer, size)
        u = rng.random(size)
        new = u < t.new_holders
        removal = ~new & (u < t.new_holders + t.removals)
        held = self.holdings[accounts]
        for _ in range(REDRAWS):  # all assets held: no new one; none held: none to change
            stuck = np.where(new, held.all(1), ~held.any(1))
            if not stuck.any():
                break
            accounts[stuck] = self._draw(producer, int(stuck.sum()))
            held[stuck] = self.holdings[accounts[stuck]]
        stuck = np.where(new, held.all(1), ~held.any(1))
        new ^= stuck  # still stuck: a new holder becomes a change, the others new holders
        removal &= ~stuck
        keys = rng.random(held.shape)
        keys[np.where(new[:, None], held, ~held)] = -1.0
        amounts = rng.integers(1, MAX_AMOUNT, size, dtype=np.int64)
        amounts[removal] = 0
        return self._settle(accounts, keys.argmax(1).astype(np.int64), amounts)

    def _draw(self, producer: int, count: int) -> Ints:
        lo, hi = self._ranges[producer]
        rng = self._rngs[producer]
        if self.traffic.zipf is None:
            return rng.integers(lo, hi, count, dtype=np.int64)
        cdf, order = self._zipf[lo, hi]
        ranks = np.minimum(np.searchsorted(cdf, rng.random(count), "right"), hi - lo - 1)
        return order[ranks]

    def _settle(self, accounts: Ints, assets: Ints, amounts: Ints) -> Batch:
        """Apply a batch to the holdings (the last update of a leaf wins) and count it."""
        n = self.traffic.assets
        leaf = accounts * n + assets
        leaves, first_from_end = np.unique(leaf[::-1], return_index=True)
        flat = self.holdings.reshape(-1)
        before, after = flat[leaves], amounts[len(leaf) - 1 - first_from_end] > 0
        flat[leaves] = after
        asset = leaves % n
        return Batch(
            accounts,
            assets,
            amounts,
            leaves,
            np.bincount(asset[~before & after], minlength=n).astype(np.int64),
            np.bincount(asset[before & ~after], minlength=n).astype(np.int64),
        )


def tree_hashes(leaves: int, height: int) -> float:
    """Expected SHA-256 calls to rehash ``leaves`` distinct leaves on uniformly
    random distinct slots of a tree of ``height``: the leaves, plus at each
    level the nodes with at least one of them below."""
    size = 1 << height
    if not 0 <= leaves <= size:
        raise TrafficError(f"{leaves} leaves do not fit a tree of height {height}")
    total = float(leaves)
    for level in range(1, height + 1):
        total += (size >> level) * (1 - _untouched(size, 1 << level, leaves))
    return total


def _untouched(size: int, span: int, leaves: int) -> float:
    """C(size - span, leaves) / C(size, leaves): the chance that none of
    ``leaves`` random distinct slots of ``size`` lies in a given ``span``. The
    ratio is symmetric in span and leaves: a product over the smaller."""
    if leaves > size - span:
        return 0.0
    few, many = sorted((span, leaves))
    return float(np.exp(np.log1p(-many / (size - np.arange(few, dtype=np.float64))).sum()))


class Trees:
    """The prover's tree heights (PROTOCOL §2.5) in one salt period that began
    with ``holders`` per asset: a tree starts at ``height_for(holders, room)``
    with the room for an eighth more holders the daemon leaves at start; a
    slot, once handed out, stays used until the period ends (removals free
    none); when new holders need more slots than ``2**h``, the tree is rebuilt
    at ``max(h + 1, height_for(holders))`` and only the holders use slots."""

    def __init__(self, holders: Sequence[int]) -> None:
        self.holders = [int(n) for n in holders]
        self.used = list(self.holders)
        self.heights = [height_for(n, math.ceil(n * START_ROOM_SHARE)) for n in self.holders]
        self.growths = 0
        self.updates = self.created = self.removed = 0  # totals so far

    def advance(self, updates: int, created: Sequence[int], removed: Sequence[int]) -> None:
        """Count ``updates``, the pairs they created and removed per asset, and
        grow trees as the prover does."""
        self.updates += updates
        self.created += sum(created)
        self.removed += sum(removed)
        for a, (new, gone) in enumerate(zip(created, removed, strict=True)):
            self.holders[a] += int(new) - int(gone)
            self.used[a] += int(new)
            if self.used[a] > 1 << self.heights[a]:
                self.heights[a] = max(self.heights[a] + 1, height_for(self.holders[a]))
                self.used[a] = self.holders[a]
                self.growths += 1


@dataclass(frozen=True)
class EpochWork:
    """What one epoch's acknowledged batches offered the trees."""

    updates: int
    leaves: int  # distinct holder-asset leaves changed
    hashes: float  # expected, by tree_hashes per asset at the epoch's heights


def epoch_work(
    acked: Sequence[tuple[float, Batch]], closes: Sequence[float], trees: Trees
) -> list[EpochWork]:
    """The work of each epoch closed at ``closes`` (ascending): every batch acked
    at or before a close and after the one before it counts in that epoch.
    ``trees`` advances by the epochs in turn, then by the batches acked after
    the last close (in epochs not reported)."""
    epochs: list[list[Batch]] = [[] for _ in range(len(closes) + 1)]
    for at, batch in acked:
        epochs[int(np.searchsorted(closes, at, "left"))].append(batch)
    out = []
    for i, batches in enumerate(epochs):
        n = len(trees.heights)
        created, removed = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for b in batches:
            created += b.created
            removed += b.removed
        updates = sum(map(len, batches))
        trees.advance(updates, created.tolist(), removed.tolist())
        if i == len(closes):
            break
        leaves = np.unique(np.concatenate([b.leaves for b in batches] or [np.zeros(0, np.int64)]))
        per_asset = np.bincount(leaves % n, minlength=n)
        hashes = sum(map(tree_hashes, per_asset.tolist(), trees.heights))
        out.append(EpochWork(updates, len(leaves), hashes))
    return out


@dataclass(frozen=True)
class Offered:
    """The tree work offered by a run's epochs that had updates."""

    epochs: int
    leaves_median: float  # distinct leaves changed per epoch
    leaves_max: int
    hashes_per_update: float
    growths: int  # trees rebuilt one level higher meanwhile


def offered(acked: Sequence[tuple[float, Batch]], closes: Sequence[float], trees: Trees) -> Offered:
    """``epoch_work`` of the batches ``acked`` in epochs closed at ``closes``, summed up."""
    growths = trees.growths
    work = [w for w in epoch_work(acked, closes, trees) if w.updates]
    leaves = [w.leaves for w in work]
    return Offered(
        len(work),
        statistics.median(leaves) if leaves else 0.0,
        max(leaves, default=0),
        sum(w.hashes for w in work) / max(1, sum(w.updates for w in work)),
        trees.growths - growths,
    )
