"""The sum trees live in a child process, so hashing never stalls the event loop.

hashlib holds the GIL for small messages, so a thread would still take the
loop's interpreter away for the whole epoch build. The child owns a ``Ledger``;
the parent sends it requests over a pipe, typed messages in msgpack
(prover/worker_messages.py), and waits for the answer in a thread
(``recv_bytes`` releases the GIL). Requests are served one at a time, in order.

Rows of the open epoch are staged as they are acknowledged; once enough wait
and the pipe is idle, the child hashes them into the trees' lower levels
(``Ledger.flush``), so that an epoch's close hashes only the rest. Proofs
still show the last closed epoch. From an apply until the parent's
``release``, the child hashes nothing ahead: the parent is then committing
the epoch and handing it to subscribers, whose latency counts. Trees built
``ahead`` (the next salt period's) catch up the same way, on rows staged
before their first apply; ``unhashed`` tells how far behind they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

import msgspec

from prover.errors import NotRetained, ProverError
from prover.export import proof_file_name, write_new_file
from prover.ledger import AssetRoot, Ledger, UserProof
from prover.mapped import ProofBasis
from prover.periods import SaltPeriod
from prover.worker_messages import (
    Applied,
    Apply,
    Begin,
    Build,
    Built,
    Closed,
    Done,
    Export,
    ExportFailed,
    Failed,
    Found,
    FoundMany,
    Pending,
    ProofOf,
    ProofsOf,
    Release,
    Reply,
    Request,
    Row,
    Rows,
    Snapshot,
    Snapshotted,
    Stage,
    Stop,
    Unhashed,
    Unretained,
    WireProof,
    WireRoot,
    WriteProofs,
    Written,
    decode_reply,
    decode_request,
    encode,
    error_of,
)

__all__ = ["Applied", "Row", "TreeWorker"]

EAGER_ROWS = 5_000  # staged rows the worker hashes ahead of the epoch's close, when idle
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHAN_CHECK = 0.1  # seconds between two looks at the parent, where prctl is missing
A = TypeVar("A", bound=Reply)


def write_proofs(out: Path, proofs: Iterable[UserProof], basis: ProofBasis) -> int:
    """Write each proof as a new file in ``out`` (prover/export.py), its record's
    part from ``basis``; return their number."""
    written = 0
    for found in proofs:
        proof = basis.proof(found)
        write_new_file(out / proof_file_name(found.user), proof.to_json().encode())
        written += 1
    return written


def export_proofs(ledger: Ledger, out: Path, start: int, count: int, basis: ProofBasis) -> int:
    """Write one proof file per user holding anything, for users ``start .. start+count``,
    each a new file (prover/export.py)."""
    stop = min(len(ledger.users), start + count)
    found = (ledger.proof(user) for user in ledger.users.ids(min(start, stop), stop))
    return write_proofs(out, (p for p in found if p is not None), basis)


def _exit_with(parent: int) -> None:
    """End this process as soon as ``parent`` is gone, even while it computes
    (building the trees takes seconds): on Linux the kernel kills it when the
    parent's thread that started it exits (``PR_SET_PDEATHSIG``), elsewhere a
    thread looks every ``ORPHAN_CHECK`` seconds; and at once if the parent
    died before this was set up."""
    armed = False
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(ORPHAN_CHECK)
            os._exit(1)

        threading.Thread(target=watch, name="orphan-check", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class _Trees:
    """The child's side: the trees and what leads up to them (module docstring)."""

    ledger: Ledger | None = None
    snapshot: Ledger | None = None  # frozen for an export
    begun: Begin | None = None  # the period being built, and its rows
    rows: list[Row] = field(default_factory=list)
    failed: str = ""  # a "Stage" that failed, reported by the next "Apply"
    held: bool = False  # from an "Apply" to the next "Release": no hashing ahead

    def answer(self, request: Request) -> Reply | None:
        """Serve one request; None for those without an answer (``Stage``, ``Release``)."""
        match request:
            case Begin():  # a new period: rows follow in chunks, then "Build"
                self.begun, self.rows = request, []
                return Done()
            case Rows(rows=rows):
                self.rows.extend(rows)
                return Done()
            case Build():
                begun = self.begun
                assert begun is not None
                ledger = Ledger.build(
                    begun.period,
                    begun.assets,
                    self.rows,
                    room=begun.room,
                    room_share=begun.room_share,
                )
                ledger.retain, ledger.retain_bytes = begun.retain, begun.retain_bytes
                ledger.ahead = begun.ahead
                self.ledger, self.rows = ledger, []
                return Built(tuple(WireRoot.of(r) for r in ledger.roots()))
            case Stage(rows=rows):  # rows of the coming epoch, ahead of "Apply"
                self._trees().stage_rows(rows)
                return None
            case Release():  # the parent has handed out the epoch
                self.held = False
                return None
            case Apply(assets=assets, rows=rows):
                ledger = self._trees()
                if self.failed:
                    self.failed, problem = "", self.failed
                    raise ValueError(f"staging rows failed: {problem}")
                start = time.perf_counter()
                for asset in assets:
                    ledger.add_asset(asset)
                ledger.stage_rows(rows)
                unhashed = ledger.staged
                roots = tuple(WireRoot.of(r) for r in ledger.close_epoch())
                self.held = True  # the parent commits and hands out the epoch: leave it the cores
                seconds = time.perf_counter() - start
                return Closed(roots, seconds, ledger.room(), unhashed, list(ledger.grown))
            case Unhashed():
                return Pending(self._trees().staged)
            case ProofOf(user=user, age=age):
                found = self._trees().proof(user, age)
                return Found(None if found is None else WireProof.of(found))
            case Snapshot(ids=ids):  # freeze the trees for an export
                ledger = self._trees()
                history, ledger.history = ledger.history, deque()
                self.snapshot = copy.deepcopy(ledger)  # without the retained epochs
                ledger.history = history
                users = self.snapshot.users
                return Snapshotted(len(users), users.ids() if ids else [])
            case Export(out=out, start=start, count=count, basis=basis):
                return Written(export_proofs(self._frozen(), Path(out), start, count, basis))
            case ProofsOf(users=users):
                frozen = self._frozen()
                return FoundMany(
                    [None if (p := frozen.proof(u)) is None else WireProof.of(p) for u in users]
                )
            case WriteProofs(out=out, proofs=proofs, basis=basis):
                return Written(write_proofs(Path(out), (p.value() for p in proofs), basis))
            case Stop():
                return Done()

    def _trees(self) -> Ledger:
        assert self.ledger is not None, "no trees built yet"
        return self.ledger

    def _frozen(self) -> Ledger:
        assert self.snapshot is not None, "no snapshot taken"
        return self.snapshot

    def after_stage(self, idle: bool) -> None:
        """After a ``Stage`` or ``Release``: hash the staged rows ahead if
        enough wait, the parent is not handing out an epoch and no request
        is waiting (``idle``)."""
        ledger = self.ledger
        if ledger is not None and not self.held and ledger.staged >= EAGER_ROWS and idle:
            ledger.flush()  # hash now what the close would otherwise wait for


def _refusal(request: Request, exc: Exception) -> Reply:
    if isinstance(exc, NotRetained):
        return Unretained(str(exc))
    if isinstance(request, Export | WriteProofs) and isinstance(exc, ProverError):
        return ExportFailed(str(exc))  # a file not written
    return Failed(f"{type(exc).__name__}: {exc}")


def _serve(conn: Connection, parent: int | None = None) -> None:
    """Child process main loop: one request in, its answer out, until ``Stop``.

    The child ends with its ``parent`` process (``_exit_with``; None: the loop
    runs in the caller's process), and when the pipe closes or brings
    something that is no request (answering it could pair a later answer
    with the wrong request). Other signals are the parent's business: a
    Ctrl-C reaching the whole process group must not kill the trees under an
    epoch the parent is finishing.
    """
    if parent is not None:
        _exit_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    trees = _Trees()
    while True:
        try:
            request = decode_request(conn.recv_bytes())
        except (EOFError, msgspec.DecodeError):  # the parent is gone (killed), or not ours
            return
        try:
            reply = trees.answer(request)
            if isinstance(request, Stage | Release):
                trees.after_stage(idle=not conn.poll())
        except Exception as exc:  # report to the parent, keep serving
            if isinstance(request, Stage | Release):  # answered at the next "Apply", which fails
                trees.failed = trees.failed or f"{type(exc).__name__}: {exc}"
                continue
            reply = _refusal(request, exc)
        if reply is not None:
            conn.send_bytes(encode(reply))
        if isinstance(request, Stop):
            return


class TreeWorker:
    """Handle on the child process that owns the trees: every exchange with it
    goes through one thread, in order (rows staged before an ``apply`` reach
    the child before it)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(child, os.getpid()), daemon=True, name="sum-trees"
        )
        self._process.start()
        child.close()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="tree-worker-io")

    def _exchange(self, request: Request, answer: type[A]) -> A:
        self._conn.send_bytes(encode(request))
        try:
            reply = decode_reply(self._conn.recv_bytes())
        except EOFError:
            raise RuntimeError("tree worker: its process is gone") from None
        if isinstance(reply, answer):
            return reply
        raise error_of(reply, answer.__name__)

    def send(self, request: Request, answer: type[A]) -> Future[A]:
        """Send ``request`` from the worker's thread, after everything sent
        before; the future gets its ``answer``, or the error it stands for
        (prover/worker_messages.py)."""
        return self._io.submit(self._exchange, request, answer)

    async def _call(self, request: Request, answer: type[A]) -> A:
        return await asyncio.wrap_future(self.send(request, answer))

    async def build(
        self,
        period: SaltPeriod,
        assets: Sequence[str],
        chunks: Iterable[Sequence[Row]],
        retain: int = 0,
        retain_bytes: int = 0,
        room: Mapping[str, int] | None = None,
        room_share: float = 0.0,
        ahead: bool = False,
    ) -> tuple[AssetRoot, ...]:
        """Build every tree of ``period`` from balance rows, sent chunk by chunk,
        keeping the proofs of ``retain`` earlier epochs in at most
        ``retain_bytes`` from then on; each tree leaving at least ``room`` and
        ``room_share`` free (``Ledger.build``); ``ahead`` of its first epoch
        (``Ledger.ahead``) if so.

        ``chunks`` is consumed in a worker thread, so it may read a database.
        """
        begin = Begin(
            period, list(assets), retain, retain_bytes, dict(room or {}), room_share, ahead
        )

        def send_all() -> tuple[AssetRoot, ...]:
            self._exchange(begin, Done)
            for chunk in chunks:
                self._exchange(Rows(list(chunk)), Done)
            return tuple(r.value() for r in self._exchange(Build(), Built).roots)

        return await asyncio.wrap_future(self._io.submit(send_all))

    def stage(self, rows: list[Row]) -> None:
        """Send rows for the next ``apply`` now, so that the epoch's close does not
        wait for their transfer (the trees, and so proofs, change only at ``apply``)."""
        self._io.submit(lambda: self._conn.send_bytes(encode(Stage(rows))))

    async def apply(self, assets: Sequence[str], rows: Sequence[Row]) -> Applied:
        """Add new ``assets``, apply the staged rows then ``rows`` in order, and
        return the new roots."""
        closed = await self._call(Apply(list(assets), list(rows)), Closed)
        return closed.value()

    async def unhashed(self) -> int:
        """How many staged updates the child has not hashed yet, once it has
        received every row staged before."""
        return (await self._call(Unhashed(), Pending)).updates

    def release(self) -> None:
        """Let the child hash ahead again: after an ``apply`` it waits for this,
        so that the epoch's commit and fan-out have the cores to themselves."""
        with contextlib.suppress(RuntimeError):  # closed already: nothing to release
            self._io.submit(lambda: self._conn.send_bytes(encode(Release())))

    async def proof(self, user: str, age: int = 0) -> UserProof | None:
        """``user``'s proof as of the last apply, or ``age`` applies before it.

        Raises:
            NotRetained: that apply is no longer retained.
        """
        found = (await self._call(ProofOf(user, age), Found)).proof
        return None if found is None else found.value()

    async def snapshot(self) -> int:
        """Freeze a copy of the trees for ``export``; return its number of users."""
        return (await self._call(Snapshot(), Snapshotted)).users

    async def snapshot_ids(self) -> list[str]:
        """``snapshot``, returning the snapshot's user ids."""
        return (await self._call(Snapshot(ids=True), Snapshotted)).ids

    async def export(self, out: Path, start: int, count: int, basis: ProofBasis) -> int:
        """Write the proofs of snapshot users ``start .. start+count`` into ``out``."""
        return (await self._call(Export(str(out), start, count, basis), Written)).files

    async def snapshot_proofs(self, users: list[str]) -> list[WireProof | None]:
        """The snapshot's proof of each of ``users`` (None: holds nothing here)."""
        return (await self._call(ProofsOf(users), FoundMany)).proofs

    async def write_proofs(self, out: Path, proofs: list[WireProof], basis: ProofBasis) -> int:
        """Write one proof file per proof into ``out``."""
        return (await self._call(WriteProofs(str(out), proofs, basis), Written)).files

    async def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(TimeoutError, OSError, EOFError, RuntimeError):
                await asyncio.wait_for(self._call(Stop(), Done), 5)
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
        self._io.shutdown(wait=False, cancel_futures=True)
