"""The sum trees live in a child process, so hashing never stalls the event loop.

hashlib holds the GIL for small messages, so a thread would still take the
loop's interpreter away for the whole epoch build. The child owns a ``Ledger``;
the parent sends it commands over a pipe and waits for the answer in a thread
(``recv`` releases the GIL). Commands are served one at a time, in order.

Rows of the open epoch are staged as they are acknowledged; once enough wait
and the pipe is idle, the child hashes them into the trees' lower levels
(``Ledger.flush``), so that an epoch's close hashes only the rest. Proofs
still show the last closed epoch. From an apply until the parent's
``release``, the child hashes nothing ahead: the parent is then committing
the epoch and handing it to subscribers, whose latency counts.
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
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

from prover.errors import NotRetained, ProverError
from prover.export import proof_file_name, write_new_file
from prover.ledger import AssetRoot, Ledger, UserProof
from prover.periods import SaltPeriod
from verifier.proof import AssetPath, ProofFile
from verifier.stream import EpochMessage

__all__ = ["Applied", "TreeWorker"]

Row = tuple[str, str, int]  # user, asset, amount
# staged rows cross the pipe as msgpack: pickling them held the GIL 6 times as long
_staged_rows = msgspec.msgpack.Decoder(list[Row])
EAGER_ROWS = 5_000  # staged rows the worker hashes ahead of the epoch's close, when idle
PR_SET_PDEATHSIG = 1  # linux/prctl.h
ORPHAN_CHECK = 0.1  # seconds between two looks at the parent, where prctl is missing


@dataclass(frozen=True, slots=True)
class Applied:
    """The worker's answer to an epoch: every root, and how long the trees took."""

    roots: tuple[AssetRoot, ...]
    seconds: float


def export_proofs(ledger: Ledger, out: Path, start: int, count: int, epoch: EpochMessage) -> int:
    """Write one proof file per user holding anything, for users ``start .. start+count``,
    each a new file (prover/export.py)."""
    written = 0
    for user in ledger.user_ids[start : start + count]:
        found = ledger.proof(user)
        if found is None:
            continue
        proof = ProofFile(
            user=user,
            salt=found.salt,
            assets=tuple(AssetPath(a, s, b, p) for a, s, b, p in found.entries),
            record=epoch.record,
            inclusion=epoch.inclusion,
            checkpoint=epoch.checkpoint,
        )
        write_new_file(out / proof_file_name(user), proof.to_json().encode())
        written += 1
    return written


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


def _serve(conn: Connection, parent: int | None = None) -> None:
    """Child process main loop: one command in, one answer out, until ``stop``.

    The child ends with its ``parent`` process (``_exit_with``; None: the loop
    runs in the caller's process). Other signals are the parent's business: a
    Ctrl-C reaching the whole process group must not kill the trees under an
    epoch the parent is finishing.
    """
    if parent is not None:
        _exit_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ledger: Ledger | None = None
    snapshot: Ledger | None = None
    period: SaltPeriod | None = None
    assets: list[str] = []
    rows: list[Row] = []
    failed = ""  # a "stage" that failed, reported by the next "apply"
    held = False  # from an "apply" to the next "release": no hashing ahead
    while True:
        try:
            command, args = conn.recv()
        except EOFError:  # the parent is gone (killed): nothing left to serve
            return
        try:
            if command == "stop":
                conn.send(("ok", None))
                return
            if command == "begin":  # a new period: rows follow in chunks, then "build"
                period, assets, retain, retain_bytes = args
                rows = []
                conn.send(("ok", None))
            elif command == "rows":
                rows.extend(args)
                conn.send(("ok", None))
            elif command == "build":
                assert period is not None
                ledger = Ledger.build(period, assets, rows)
                ledger.retain, ledger.retain_bytes = retain, retain_bytes
                rows = []
                conn.send(("ok", tuple(ledger.roots())))
            elif command in ("stage", "release"):  # no answer to either
                assert ledger is not None
                if command == "stage":  # rows of the coming epoch, ahead of "apply"
                    ledger.stage_rows(_staged_rows.decode(args))
                else:  # the parent has handed out the epoch
                    held = False
                if not held and ledger.staged >= EAGER_ROWS and not conn.poll():
                    ledger.flush()  # hash now what the close would otherwise wait for
            elif command == "apply":
                assert ledger is not None
                if failed:
                    failed, problem = "", failed
                    raise ValueError(f"staging rows failed: {problem}")
                new_assets, updates = args
                start = time.perf_counter()
                for asset in new_assets:
                    ledger.add_asset(asset)
                ledger.stage_rows(updates)
                roots = tuple(ledger.close_epoch())
                conn.send(("ok", Applied(roots, time.perf_counter() - start)))
                held = True  # the parent commits and hands out the epoch: leave it the cores
            elif command == "proof":
                assert ledger is not None
                conn.send(("ok", ledger.proof(*args)))
            elif command == "snapshot":  # freeze the trees for an export
                assert ledger is not None
                history, ledger.history = ledger.history, deque()
                snapshot = copy.deepcopy(ledger)  # without the retained epochs
                ledger.history = history
                conn.send(("ok", len(snapshot.user_ids)))
            elif command == "export":
                assert snapshot is not None
                conn.send(("ok", export_proofs(snapshot, *args)))
            else:
                conn.send(("error", f"unknown command {command!r}"))
        except Exception as exc:  # report to the parent, keep serving
            if command in ("stage", "release"):  # answered at the next "apply", which fails
                failed = failed or f"{type(exc).__name__}: {exc}"
            elif isinstance(exc, NotRetained):
                conn.send(("not-retained", str(exc)))
            elif command == "export" and isinstance(exc, ProverError):  # a file not written
                conn.send(("failed", str(exc)))
            else:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))


class TreeWorker:
    """Handle on the child process that owns the trees."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(child, os.getpid()), daemon=True, name="sum-trees"
        )
        self._process.start()
        child.close()
        # every exchange with the child goes through this one thread, in order:
        # rows staged before an "apply" reach the child before it
        self._io = ThreadPoolExecutor(1, thread_name_prefix="tree-worker-io")

    def _call_blocking(self, command: str, args: Any) -> Any:
        self._conn.send((command, args))
        status, value = self._conn.recv()
        if status == "not-retained":
            raise NotRetained(value)
        if status == "failed":
            raise ProverError(value)
        if status != "ok":
            raise RuntimeError(f"tree worker: {value}")
        return value

    async def _call(self, command: str, args: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._call_blocking, command, args)

    async def build(
        self,
        period: SaltPeriod,
        assets: Sequence[str],
        chunks: Iterable[Sequence[Row]],
        retain: int = 0,
        retain_bytes: int = 0,
    ) -> tuple[AssetRoot, ...]:
        """Build every tree of ``period`` from balance rows, sent chunk by chunk,
        keeping the proofs of ``retain`` earlier epochs in at most
        ``retain_bytes`` from then on.

        ``chunks`` is consumed in a worker thread, so it may read a database.
        """

        def send_all() -> tuple[AssetRoot, ...]:
            self._call_blocking("begin", (period, list(assets), retain, retain_bytes))
            for chunk in chunks:
                self._call_blocking("rows", list(chunk))
            result: tuple[AssetRoot, ...] = self._call_blocking("build", None)
            return result

        return await asyncio.get_running_loop().run_in_executor(self._io, send_all)

    def stage(self, rows: list[Row]) -> None:
        """Send rows for the next ``apply`` now, so that the epoch's close does not
        wait for their transfer (the trees, and so proofs, change only at ``apply``)."""
        self._io.submit(lambda: self._conn.send(("stage", msgspec.msgpack.encode(rows))))

    async def apply(self, assets: Sequence[str], rows: Sequence[Row]) -> Applied:
        """Add new ``assets``, apply the staged rows then ``rows`` in order, and
        return the new roots."""
        result: Applied = await self._call("apply", (list(assets), list(rows)))
        return result

    def release(self) -> None:
        """Let the child hash ahead again: after an ``apply`` it waits for this,
        so that the epoch's commit and fan-out have the cores to themselves."""
        with contextlib.suppress(RuntimeError):  # closed already: nothing to release
            self._io.submit(lambda: self._conn.send(("release", None)))

    async def proof(self, user: str, age: int = 0) -> UserProof | None:
        """``user``'s proof as of the last apply, or ``age`` applies before it.

        Raises:
            NotRetained: that apply is no longer retained.
        """
        result: UserProof | None = await self._call("proof", (user, age))
        return result

    async def snapshot(self) -> int:
        """Freeze a copy of the trees for ``export``; return its number of users."""
        count: int = await self._call("snapshot")
        return count

    async def export(self, out: Path, start: int, count: int, epoch: EpochMessage) -> int:
        """Write the proofs of snapshot users ``start .. start+count`` into ``out``."""
        written: int = await self._call("export", (out, start, count, epoch))
        return written

    async def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(TimeoutError, OSError, EOFError, RuntimeError):
                await asyncio.wait_for(self._call("stop"), 5)
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
        self._io.shutdown(wait=False, cancel_futures=True)
