"""Verifier benchmark: a customer's whole ``solvency-verify proof`` process, and the
CPU an auditor's ``solvency-verify watch`` uses at one epoch per second.

    python benchmarks/bench_verify.py [--runs 20] [--watch-seconds 30] [--holders 1000000]

The proof is a real one: 4 assets, trees of height 20 (2**20 slots each,
with the default holders), from the prover's own code (format
solvency-proof/2: the record's header, each asset's entry and map path).
The command is the installed ``solvency-verify``, with the verifier's
bytecode compiled first, as pip compiles an installed package's. The
watched log is served on 127.0.0.1 by this script.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.server import ServerConnection, serve

import verifier
from prover.ledger import Ledger
from prover.mapped import MappedRecord
from prover.periods import SaltPeriod
from verifier import rfc9162
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.proof import ProofFile
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.stream import EpochMessage

ORIGIN = "bench.example/solvency"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ASSETS = {"BTC": 8, "ETH": 9, "USDT": 6, "SOL": 9}


def make_proof(holders: int = 1_000_000) -> ProofFile:
    rng = np.random.default_rng(3)
    users = [f"u{i}" for i in range(holders)]
    rows = [
        (users[i], asset, int(a))
        for asset in ASSETS
        for i, a in zip(range(holders), rng.integers(1, 10**9, holders), strict=True)
    ]
    ledger = Ledger.build(SaltPeriod(1, 0, bytes(32)), list(ASSETS), rows)
    roots = ledger.roots()
    record = EpochRecord(
        0,
        1_790_000_000_000,
        60_000,
        tuple(
            AssetState(
                r.asset,
                ASSETS[r.asset],
                r.height,
                r.root,
                r.total,
                r.total,
                Status.SOLVENT,
                (ReserveSource("cold", r.total, 1_790_000_000_000),),
            )
            for r in roots
        ),
    )
    leaf = rfc9162.leaf_hash(record.header.encode())
    note = sign_note(
        Checkpoint(ORIGIN, 1, rfc9162.root_from_leaf_hashes([leaf])).to_note_body(), ORIGIN, KEY
    )
    found = ledger.proof(users[holders // 2])
    assert found is not None
    return MappedRecord(record).basis(EpochMessage(record.encode(), note, (), ())).proof(found)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve_epochs(seconds: float, key: str, state: Path) -> float:
    """Publish one epoch per second to a watching auditor; return its CPU share."""
    hashes: list[bytes] = []
    queues: list[asyncio.Queue[str]] = []

    async def handler(ws: ServerConnection) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        queues.append(queue)

        async def pump() -> None:
            while True:
                await ws.send(await queue.get())

        sender = asyncio.create_task(pump())
        await ws.wait_closed()  # the auditor was stopped
        sender.cancel()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "verifier.cli",
                "watch",
                f"ws://127.0.0.1:{port}",
                "--key",
                key,
                "--state",
                str(state),
                "--keep-going",
            ],
            stdout=subprocess.DEVNULL,
        )
        await asyncio.sleep(2)  # start-up is not steady state
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            record = EpochRecord(
                n,
                1_790_000_000_000 + n * 1000,
                60_000,
                tuple(
                    AssetState(
                        a,
                        d,
                        20,
                        bytes([n % 256]) * 32,
                        10**12,
                        10**12,
                        Status.SOLVENT,
                        (ReserveSource("cold", 10**12, 1_790_000_000_000 + n * 1000),),
                    )
                    for a, d in sorted(ASSETS.items())
                ),
            )
            hashes.append(rfc9162.leaf_hash(record.header.encode()))
            size = len(hashes)
            message = EpochMessage(
                record.encode(),
                sign_note(
                    Checkpoint(ORIGIN, size, rfc9162.root_from_leaf_hashes(hashes)).to_note_body(),
                    ORIGIN,
                    KEY,
                ),
                tuple(rfc9162.inclusion_proof(hashes, n, size)),
                tuple(rfc9162.consistency_proof(hashes, n, size)),
            ).to_json()
            for q in queues:
                q.put_nowait(message)
            n += 1
            await asyncio.sleep(1)
        share = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        proc.terminate()
        proc.wait()
    return share


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--watch-seconds", type=float, default=30)
    parser.add_argument("--holders", type=int, default=1_000_000)
    args = parser.parse_args()
    key = str(verifier_key_for(ORIGIN, KEY.public_key()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "proof.json"
        path.write_text(make_proof(args.holders).to_json())
        # as a customer runs it: the installed command, its bytecode compiled
        # (pip compiles an installed package's; this checkout's may not be)
        compileall.compile_dir(Path(verifier.__file__).parent, quiet=1)
        script = Path(sys.executable).with_name("solvency-verify")
        command = [str(script), "proof", str(path), "--key", key]
        times = []
        for _ in range(args.runs):
            began = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            times.append((time.perf_counter() - began) * 1000)
        share = asyncio.run(serve_epochs(args.watch_seconds, key, Path(tmp) / "auditor"))
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(
        f"{'solvency-verify proof, 4 assets x height 20, whole process (ms, median)':<72} "
        f"{statistics.median(times):>8.0f}"
    )
    print(f"{f'solvency-verify proof, worst of {args.runs} runs (ms)':<72} {max(times):>8.0f}")
    print(f"{'solvency-verify watch at 1 epoch/s, CPU share of one core':<72} {share:>8.2%}")


if __name__ == "__main__":
    main()
