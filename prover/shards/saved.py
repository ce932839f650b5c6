"""What a shard saves at each close, and its ledger rebuilt from it
(docs/SCALING.md, "Recovery"; storage/shards.py keeps it). Pure.

A close saves the shard's state (its reader's after the cut, each tree's
height and allocator position, its replies to the epoch's Stage and Close)
and the holdings the epoch changed: the (user, asset) pairs staged in it,
each with its balance and slot in the whole tree or gone, and every holder
of a tree the close rebuilt (its slots all moved), or of every tree when
the close switched to a new salt period (the state then names it). A restarted shard
rebuilds its ledger from the saved holdings at the saved slots and
positions (``Ledger.restore``), checks that it gives the saved roots, and
reads the stream again from the saved ``resume``.

Invariant: the holdings saved over every close up to epoch ``n`` are the
shard ledger's holders after closing ``n``, at their slots; with the
positions, they rebuild its trees byte for byte and hand out the same
slots next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain

import msgspec
import numpy as np
import numpy.typing as npt

from prover.book import NO_SLOT
from prover.errors import ProverError
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.routing import Router
from prover.shards.control import ClosedPart, PartRoot, Staged, WireState
from prover.shards.intake import ReaderState
from storage.shards import Holding, HoldingChanges, ShardState

__all__ = ["Touched", "decode_replies", "restored_ledger", "saved_close", "touched"]

Touched = dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]]  # user indices, amounts

_replies = msgspec.msgpack.Decoder(tuple[Staged, ClosedPart])


def touched(ledger: Ledger) -> Touched:
    """The updates staged in ``ledger`` (the last of each user and asset),
    taken before the close that applies them: per asset, user indices and
    amounts. Every change of an epoch if nothing was flushed in it."""
    return {
        asset: (
            np.fromiter(changes.keys(), np.int64, len(changes)),
            np.fromiter(changes.values(), np.uint64, len(changes)),
        )
        for asset, changes in ledger.pending.items()
    }


def saved_close(
    ledger: Ledger, staged: Staged, closed: ClosedPart, changed: Touched, switched: bool = False
) -> tuple[ShardState, HoldingChanges]:
    """What to save of ``ledger`` just closed (``closed``, the reply to the
    ``staged`` epoch), ``changed`` in it (``touched`` before the close);
    ``switched``: ``ledger`` is a new salt period's, every holding replaced."""
    replaced = frozenset(ledger.books if switched else ledger.grown)
    held: list[Holding] = []
    gone: list[tuple[str, str]] = []
    ids = ledger.users
    for asset, book in sorted(ledger.books.items()):
        if asset in replaced:
            users = np.flatnonzero(book.slots[: len(ids)] != NO_SLOT)
            amounts = book.tree.amounts()[book.slots[users]]
        elif asset in changed:
            users, amounts = changed[asset]
        else:
            continue
        slots = book.slots[users]
        here = slots != NO_SLOT
        first = book.tree.first_slot
        for user, amount, slot in zip(
            ids.select(users[here]),
            amounts[here].tolist(),
            (slots[here] + first).tolist(),
            strict=True,
        ):
            held.append((user, asset, amount, slot))
        gone += [(user, asset) for user in ids.select(users[~here])]
    trees = {
        asset: (ledger.full_height(asset), len(a.order) - a.remaining)
        for asset, book in sorted(ledger.books.items())
        for a in book.allocators
    }
    reader = closed.state
    state = ShardState(
        closed.epoch,
        ledger.period.number,
        reader.cut,
        reader.resume,
        dict(reader.marks),
        trees,
        msgspec.msgpack.encode((staged, closed)),
    )
    return state, HoldingChanges(held, gone, replaced)


def decode_replies(state: ShardState) -> tuple[Staged, ClosedPart]:
    """The replies ``state`` saved, to its epoch's Stage and Close.

    Raises:
        ProverError: they are not, or not of that epoch and reader state.
    """
    try:
        staged, closed = _replies.decode(state.replies)
    except msgspec.DecodeError as exc:
        raise ProverError(f"saved replies of epoch {state.epoch}: {exc}") from None
    reader = WireState.of(ReaderState(state.cut, state.marks, state.resume))
    if staged.epoch != state.epoch or closed.epoch != state.epoch or closed.state != reader:
        raise ProverError(f"the saved replies are not those of epoch {state.epoch}")
    return staged, closed


def restored_ledger(
    state: ShardState,
    holdings: Iterable[list[Holding]],
    period: SaltPeriod,
    router: Router,
    part: int,
    retain: int = 0,
) -> Ledger:
    """Part ``part``'s ledger as ``state`` and ``holdings`` (in chunks) saved it.

    Raises:
        ProverError: not of ``period``, or the holdings do not give the
            saved roots.
    """
    if state.period != period.number:
        raise ProverError(f"the state saved is of salt period {state.period}, not {period.number}")
    _, closed = decode_replies(state)
    trees: Mapping[str, tuple[int, int]] = state.trees
    ledger = Ledger.restore(
        period, trees, chain.from_iterable(holdings), router=router, part=part, retain=retain
    )
    if tuple(PartRoot.of(r, router.bits) for r in ledger.roots()) != closed.roots:
        raise ProverError(f"the holdings saved do not give the roots of epoch {state.epoch}")
    return ledger
