"""One role of the sharded prover in a process of its own, for bench_shards.py.

    python benchmarks/shard_roles.py frontend --port 0 --ready FILE COMMON
    python benchmarks/shard_roles.py shard --part I --period-secret HEX
        [--ledger DIR --heights BTC:21,ETH:21] [--store URL --saves FILE --fold-every N]
        --ready FILE COMMON
    python benchmarks/shard_roles.py coordinator --port 0 --data-dir DIR
        [--database-url URL] [--epoch-interval 1] [--max-interval 10] --timings FILE
        --ready FILE COMMON
    python benchmarks/shard_roles.py build --ledger DIR --part I --period-secret HEX
        --heights ... COMMON

    COMMON: --nats URL --stream NAME --prefix P --bits K --routing-key HEX
            --assets BTC,ETH,... [--token T]

Each role runs its class of ``prover.shards`` (``Frontend``; ``Shard``;
``Coordinator``, served by ``prover.server.start_server``) with a config
built from the arguments, until SIGTERM or SIGINT (the benchmark starts it
with ``live_prover.die_with_parent``, so it also ends with its parent).
Once serving, it writes ``--ready``, whole (renamed into place): JSON with
its pid, its port, and for a shard what building its ledger took.

A shard starts from a ledger the benchmark wrote (``--ledger``, see
``write_ledger``): the holder-asset pairs its traffic model starts from,
the amounts bench_stream's ``load_accounts`` gives them, each account's
routing byte; it builds its part at the whole trees' heights
(``--heights``, from ``heights``): built from rows, not recovered from
PostgreSQL. Then it moves what it built out of the garbage collector's
generations (``gc.freeze``): the roles do not manage the collector yet, as
the daemon does (prover/runtime.py).
``build`` builds one part the same way and prints what it held (JSON), no
NATS needed.

With ``--store``, the shard saves each close there and folds the saved
deltas as a deployed one does (``Shard`` with a store: one delta row per
close, a fold every ``FOLD_EVERY`` changed holdings). A store holding
nothing for the part is seeded first from the part built as above
(``seed_part``: the built ledger saved as the close of epoch 0 at cut 0,
then folded into the saved holdings), and the shard then restores from the
store, as a restarted one does: the coordinator, finding the shards
closed epoch 0 already, records it from their saved replies. The ready
facts add the seed's and the restore's seconds. ``--saves`` gets one JSON
line per save and per fold: ``{"kind", "at" (unix s, when done),
"seconds", "cpu" (the saving thread's CPU s), "holdings"}``.

The coordinator appends one JSON line per ``close_epoch`` to ``--timings``:
``{"epoch", "began" (unix s), "seconds"}`` (the cut, every shard's stage
and close, the record, the append), or ``{"failed", "began", "seconds"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import AssetConfig, Config
from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.rotation import START_ROOM_SHARE
from prover.routing import MAX_BITS, Router
from prover.server import start_server
from prover.shards.control import ClosedPart, PartRoot, Staged, WireState
from prover.shards.coordinator import Coordinator
from prover.shards.frontend import Frontend, StreamSpec
from prover.shards.intake import ReaderState
from prover.shards.saved import saved_close
from prover.shards.shard import FOLD_EVERY, Shard, ShardCore
from prover.sizing import height_for_parts
from storage.store import HoldingChanges, ShardState, Store
from verifier.stream import EpochMessage

__all__ = [
    "AMOUNT_BASE",
    "DECIMALS",
    "ORIGIN",
    "array_bytes",
    "build_part",
    "heights",
    "part_rows",
    "rss_bytes",
    "seed_part",
    "write_ledger",
]

AMOUNT_BASE = 1000  # account u holds AMOUNT_BASE + u of each asset it holds (load_accounts)
DECIMALS = 8
ORIGIN = "bench.local/solvency"
ROWS_AT_ONCE = 1 << 16  # rows made into Python objects at a time while building
ROUTE, HOLDINGS = "route.npy", "holdings.npy"
READY_TIMEOUT = 600.0  # s for a shard's control subject to be served (a restore first)


# The ledger a shard starts from


def write_ledger(directory: Path, holdings: npt.NDArray[np.bool_], key: bytes) -> None:
    """Write ``holdings`` (accounts x assets: account ``acct{u}`` holds asset
    ``a``) and each account's routing byte under ``directory``: the top 8 bits
    of its ``Router`` hash, so that its part of ``2**k`` is the byte's top
    ``k`` bits, whatever ``k``."""
    router = Router(key, MAX_BITS)
    count = len(holdings)
    route = np.fromiter((router.shard(f"acct{u}") for u in range(count)), np.uint8, count)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / HOLDINGS, holdings)
    np.save(directory / ROUTE, route)


def _parts(directory: Path, bits: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
    holdings: npt.NDArray[np.bool_] = np.load(directory / HOLDINGS)
    route: npt.NDArray[np.uint8] = np.load(directory / ROUTE)
    return holdings, (route >> (8 - bits)).astype(np.uint8) if bits else np.zeros_like(route)


def heights(directory: Path, bits: int, assets: Sequence[str]) -> dict[str, int]:
    """The whole trees' heights of the ledger under ``directory`` split in
    ``2**bits`` parts, as the daemon makes them at start (``Ledger.build``
    with ``START_ROOM_SHARE``): room for an eighth more holders, from the
    largest part's holders."""
    holdings, parts = _parts(directory, bits)
    out = {}
    for a, asset in enumerate(assets):
        held = holdings[:, a]
        largest = int(np.bincount(parts[held], minlength=1 << bits).max())
        room = math.ceil(int(held.sum()) * START_ROOM_SHARE)
        out[asset] = height_for_parts(largest, bits, room)
    return out


def part_rows(
    directory: Path, bits: int, part: int, assets: Sequence[str]
) -> Iterator[tuple[str, str, int]]:
    """The (user, asset, amount) rows of the accounts in ``part``, made a
    chunk at a time (no list of them all is ever held)."""
    holdings, parts = _parts(directory, bits)
    accounts, held = np.nonzero(holdings & (parts == part)[:, None])
    del holdings, parts
    for start in range(0, len(accounts), ROWS_AT_ONCE):
        users = accounts[start : start + ROWS_AT_ONCE].tolist()
        which = held[start : start + ROWS_AT_ONCE].tolist()
        for u, a in zip(users, which, strict=True):
            yield f"acct{u}", assets[a], AMOUNT_BASE + u


def build_part(
    directory: Path,
    period: SaltPeriod,
    router: Router,
    part: int,
    assets: Sequence[str],
    whole: dict[str, int],
) -> Ledger:
    """Part ``part`` of every tree of the ledger under ``directory``, at the
    whole trees' heights ``whole``."""
    rows = part_rows(directory, router.bits, part, assets)
    return Ledger.build(period, assets, rows, router=router, part=part, heights=whole)


def seed_part(store: Store, stream: str, ledger: Ledger) -> int:
    """Save ``ledger`` (a part, as built) to ``store`` as its shard would
    have saved closing epoch 0 at cut 0, at the stream's start, then fold it
    into the saved holdings; return how many holdings were saved. A shard
    restored from it answers epoch 0's Stage and Close with the replies
    saved, whose roots are the ledger's."""
    assert ledger.part is not None
    bits = ledger.router.bits
    start = WireState.of(ReaderState(0, {}, 1))
    staged = Staged(0, 0, 0, ledger.growth(), None, ledger.room())
    closed = ClosedPart(0, tuple(PartRoot.of(r, bits) for r in ledger.roots()), start)
    state, changes = saved_close(ledger, staged, closed, {}, switched=True)
    store.save_shard(stream, ledger.part, None, state, changes)
    store.fold_shard(stream, ledger.part)
    return len(changes.held)


class TimedStore(Store):
    """A ``Store`` noting each shard save and fold to ``notes`` (module
    docstring): wall and CPU seconds of the thread that did it."""

    notes: TextIO | None = None
    _lock = threading.Lock()

    def save_shard(
        self,
        stream: str,
        part: int,
        after: int | None,
        state: ShardState,
        changes: HoldingChanges,
    ) -> None:
        began, cpu = time.perf_counter(), time.thread_time()
        super().save_shard(stream, part, after, state, changes)
        self._note("save", began, cpu, len(changes.held) + len(changes.gone))

    def fold_shard(self, stream: str, part: int) -> int:
        began, cpu = time.perf_counter(), time.thread_time()
        folded = super().fold_shard(stream, part)
        self._note("fold", began, cpu, folded)
        return folded

    def _note(self, kind: str, began: float, cpu: float, holdings: int) -> None:
        if self.notes is None:
            return
        line = {
            "kind": kind,
            "at": time.time(),
            "seconds": time.perf_counter() - began,
            "cpu": time.thread_time() - cpu,
            "holdings": holdings,
        }
        with self._lock:
            self.notes.write(json.dumps(line) + "\n")
            self.notes.flush()


def rss_bytes() -> int:
    """This process's resident set (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


_SCALARS = (str, bytes, int, float, bool, type(None))


def array_bytes(root: object) -> int:
    """Bytes of the numpy buffers reachable from ``root`` through attributes
    (``__dict__`` and ``__slots__``), dicts, lists, tuples and deques, each
    buffer once (views count as their base). A large container whose first
    item is a scalar or a string is taken to hold no arrays."""
    seen: set[int] = set()
    buffers: dict[int, int] = {}
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SCALARS):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            buffers[id(base)] = base.nbytes
            continue
        items: list[Any]
        if isinstance(obj, dict):
            items = list(obj.values())
        elif isinstance(obj, list | tuple | deque | set | frozenset):
            items = list(obj)
        else:
            items = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
            for cls in type(obj).__mro__:
                slots = getattr(cls, "__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if hasattr(obj, name):
                        items.append(getattr(obj, name))
        if len(items) > 1000 and isinstance(items[0], _SCALARS):
            continue
        stack.extend(items)
    return sum(buffers.values())


# The roles


def _config(args: argparse.Namespace, data_dir: Path, **settings: Any) -> Config:
    return Config(
        data_dir=data_dir,
        origin=ORIGIN,
        assets=tuple(AssetConfig(a, DECIMALS) for a in args.assets),
        ingest_token=args.token,
        **settings,
    )


def _router(args: argparse.Namespace) -> Router:
    return Router(bytes.fromhex(args.routing_key), args.bits)


def _ready(path: Path, **facts: Any) -> None:
    """Write ``path`` whole: the parent polls for it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), **facts}))
    temporary.rename(path)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def frontend(args: argparse.Namespace) -> None:
    stop = _stop_on_signals()
    spec = StreamSpec(replicas=1, name=args.stream, prefix=args.prefix)
    role = Frontend(_config(args, Path(args.data_dir)), _router(args), args.nats, spec)
    await role.start("127.0.0.1", args.port)
    _ready(args.ready, port=role.port)
    try:
        await stop.wait()
    finally:
        await role.stop(grace=5)


def _built(args: argparse.Namespace) -> tuple[Ledger, dict[str, Any]]:
    """Part ``args.part`` of the ledger under ``args.ledger``, and what building it took."""
    period = SaltPeriod(1, 0, bytes.fromhex(args.period_secret))
    whole = dict((a, int(h)) for a, _, h in (x.partition(":") for x in args.heights.split(",")))
    gc.collect()
    before, cpu, began = rss_bytes(), time.process_time(), time.perf_counter()
    ledger = build_part(Path(args.ledger), period, _router(args), args.part, args.assets, whole)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    gc.collect()
    facts: dict[str, Any] = {
        "build_s": seconds,
        "build_cpu_s": cpu,
        "rss_before": before,
        "rss_after": rss_bytes(),
    }
    facts["pairs"] = sum(int((book.slots >= 0).sum()) for book in ledger.books.values())
    facts["users"] = len(ledger.users)
    return ledger, facts


def _seeded(args: argparse.Namespace, store: Store) -> dict[str, Any]:
    """Seed ``store`` with part ``args.part`` of ``args.ledger`` if it holds
    nothing for the part (``seed_part``); what building and seeding took."""
    if not args.ledger or store.shard_state(args.stream, args.part) is not None:
        return {}
    ledger, facts = _built(args)
    began, cpu = time.perf_counter(), time.process_time()
    facts["seeded"] = seed_part(store, args.stream, ledger)
    facts["seed_s"], facts["seed_cpu_s"] = time.perf_counter() - began, time.process_time() - cpu
    del ledger
    gc.collect()
    return facts


async def shard(args: argparse.Namespace) -> None:
    stop = _stop_on_signals()
    router = _router(args)
    period = SaltPeriod(1, 0, bytes.fromhex(args.period_secret))
    core, store, facts = None, None, dict[str, Any]()
    with contextlib.ExitStack() as done:
        if args.store:
            store = TimedStore.open(args.store)
            assert isinstance(store, TimedStore)
            done.callback(store.close)
            facts = await asyncio.to_thread(_seeded, args, store)
            if args.saves:  # from here on: the shard's own saves and folds
                store.notes = done.enter_context(open(args.saves, "a"))
        elif args.ledger:
            ledger, facts = _built(args)
            core = ShardCore(ledger)
            gc.freeze()
        role = Shard(
            args.nats,
            args.stream,
            period,
            router,
            args.part,
            args.prefix,
            core=core,
            store=store,
            fold_every=args.fold_every,
        )
        began = time.perf_counter()
        task = asyncio.create_task(role.run(stop))
        serving = asyncio.ensure_future(role.serving.wait())
        await asyncio.wait({serving, task}, timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED")
        if not serving.done():
            serving.cancel()
            stop.set()
            await task
            raise SystemExit(f"shard {args.part} did not serve within {READY_TIMEOUT:.0f} s")
        if store is not None:
            gc.collect()
            gc.freeze()  # the restored core, as the built one above
            facts |= {
                "restore_s": role.stats.restore_seconds,
                "serving_s": time.perf_counter() - began,
                "rss_served": rss_bytes(),
            }
        _ready(args.ready, **facts)
        await task


class TimedCoordinator(Coordinator):
    """A ``Coordinator`` noting how long each ``close_epoch`` took (module docstring)."""

    timings: TextIO | None = None

    async def close_epoch(self) -> EpochMessage:
        began, started = time.time(), time.perf_counter()
        try:
            message = await super().close_epoch()
        except BaseException as exc:
            self._note({"failed": f"{type(exc).__name__}: {exc}"[:300]}, began, started)
            raise
        self._note({"epoch": self.metrics.epoch}, began, started)
        return message

    def _note(self, what: dict[str, Any], began: float, started: float) -> None:
        if self.timings is not None:
            line = {**what, "began": began, "seconds": time.perf_counter() - started}
            self.timings.write(json.dumps(line) + "\n")
            self.timings.flush()


async def coordinator(args: argparse.Namespace) -> None:
    stop = _stop_on_signals()
    settings: dict[str, Any] = {
        "epoch_interval": args.epoch_interval,
        "max_interval": args.max_interval,
        "proof_secret": "ab" * 16,
    }
    if args.database_url:
        settings["database_url"] = args.database_url
    config = _config(args, Path(args.data_dir), **settings)
    store = Store.open(config.url)
    role = TimedCoordinator(
        config,
        store,
        Ed25519PrivateKey.generate(),
        _router(args),
        [u.strip() for u in args.nats.split(",")],
        args.stream,
        args.prefix,
    )
    with open(args.timings, "a") as timings:
        role.timings = timings
        await role.start()
        server = await start_server(role, "127.0.0.1", args.port)
        task = asyncio.create_task(role.run(stop))
        _ready(args.ready, port=server.sockets[0].getsockname()[1])
        try:
            await stop.wait()
        finally:
            server.close()
            await asyncio.gather(task, return_exceptions=True)
            await role.close()
            store.close()


def build(args: argparse.Namespace) -> None:
    """Build one part and print what it held: its numpy arrays in all, and
    those of its trees, its slot orders and its holders' slots."""
    ledger, facts = _built(args)
    facts["arrays"] = array_bytes(ledger)
    books = list(ledger.books.values())
    facts["trees"] = array_bytes([b.tree for b in books])
    facts["slot_orders"] = array_bytes([b.allocators for b in books])
    facts["holder_slots"] = array_bytes([(b.slots, b.staged) for b in books])
    facts["slots"] = sum(1 << (ledger.full_height(a) - ledger.router.bits) for a in ledger.books)
    facts["heights"] = {a: ledger.full_height(a) for a in ledger.books}
    print(json.dumps(facts))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("role", choices=("frontend", "shard", "coordinator", "build"))
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--stream", default="ledger")
    p.add_argument("--prefix", default="ledger")
    p.add_argument("--bits", type=int, default=0)
    p.add_argument("--routing-key", default="00" * 32, help="32 bytes, hex")
    p.add_argument("--assets", type=lambda s: s.split(","), default=["BTC"])
    p.add_argument("--token", default="bench-token", help="producers' bearer token")
    p.add_argument("--ready", type=Path, help="written once serving")
    p.add_argument("--port", type=int, default=0, help="0: any free port (in --ready)")
    p.add_argument("--data-dir", default=".", help="front-end, coordinator: the config's")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--period-secret", default="11" * 32, help="32 bytes, hex")
    p.add_argument("--ledger", help="shard, build: a directory write_ledger wrote")
    p.add_argument("--heights", default="", help="the whole trees': ASSET:HEIGHT,...")
    p.add_argument("--store", default="", help="shard: save each close there (seeded if empty)")
    p.add_argument("--saves", default="", help="shard: a JSON line per save and fold")
    p.add_argument("--fold-every", type=int, default=FOLD_EVERY, help="shard, with --store")
    p.add_argument("--database-url", default="", help="coordinator (default: SQLite)")
    p.add_argument("--epoch-interval", type=float, default=1.0)
    p.add_argument("--max-interval", type=float, default=10.0, help="epochs with no update")
    p.add_argument("--timings", type=Path, default=Path("timings.jsonl"))
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.role == "build":
        build(args)
        return
    if args.ready is None:
        raise SystemExit("--ready FILE is needed")
    role = {"frontend": frontend, "shard": shard, "coordinator": coordinator}[args.role]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(role(args))


if __name__ == "__main__":
    main()
