"""A relay's CPU per forwarded frame per subscriber: ``solvency-verify relay``
in a process of its own, following a log served by this script, with
``--subscribers`` subscribers (held by another process) reading every frame.

    python benchmarks/bench_relay.py [--subscribers 100] [--frames 300] [--rate 30]
                                     [--assets 4] [--choice assets=A001,A002]

The relay's CPU (user + system, from /proc) is measured over ``--frames``
frames twice: with no subscriber (what verifying and keeping each frame
costs), then with the subscribers. It prints both, the whole CPU divided by
frames x subscribers, and the part the subscribers add, per frame per
subscriber. The frames carry ``--assets`` assets, as bench_verify.py's.
With ``--choice`` (``assets=A001,A002`` or ``only=checkpoints``) every
subscriber asks for it, and the relay builds those frames (once per epoch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from machine import cpu_model, hash_microseconds
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from verifier import rfc9162
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.stream import EpochMessage

ORIGIN = "bench.example/solvency"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def frames(count: int, assets: int) -> list[str]:
    """The root stream of a log of ``count`` epochs of ``assets`` assets."""
    hashes: list[bytes] = []
    out = []
    for n in range(count):
        now = 1_790_000_000_000 + n * 1000
        states = tuple(
            AssetState(
                f"A{i:03d}",
                8,
                20,
                bytes([n % 256]) * 32,
                10**12,
                10**12,
                Status.SOLVENT,
                (ReserveSource("cold", 10**12, now),),
            )
            for i in range(assets)
        )
        record = EpochRecord(n, now, 60_000, states)
        hashes.append(rfc9162.leaf_hash(record.header.encode()))  # the log's leaf: the header
        size = len(hashes)
        root = rfc9162.root_from_leaf_hashes(hashes)
        note = sign_note(Checkpoint(ORIGIN, size, root).to_note_body(), ORIGIN, KEY)
        inclusion = tuple(rfc9162.inclusion_proof(hashes, n, size))
        message = EpochMessage(record.encode(), note, inclusion)
        out.append(message.to_json())
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def subscribers(url: str, count: int, ready: Any, received: Any) -> None:
    """Hold ``count`` subscribers of ``url``, reading every frame, until killed."""

    async def one() -> None:
        async with connect(url, max_size=None) as ws:
            async for _ in ws:
                with received.get_lock():
                    received.value += 1

    async def hold() -> None:
        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.sleep(2)  # every handshake done
        ready.set()
        await asyncio.gather(*tasks)

    asyncio.run(hold())


async def run(args: argparse.Namespace) -> None:
    stream = frames(2 * args.frames + 1, args.assets)
    published: list[str] = []
    grew = asyncio.Condition()

    async def handler(ws: ServerConnection) -> None:
        async def pump() -> None:
            sent = 0
            while True:
                async with grew:
                    await grew.wait_for(lambda: sent < len(published))  # noqa: B023
                while sent < len(published):
                    await ws.send(published[sent])
                    sent += 1

        task = asyncio.create_task(pump())
        await ws.wait_closed()
        task.cancel()

    async def publish(count: int) -> None:
        for _ in range(count):
            async with grew:
                published.append(stream[len(published)])
                grew.notify_all()
            await asyncio.sleep(1 / args.rate)
        await asyncio.sleep(1)  # the last frames forwarded

    key = str(verifier_key_for(ORIGIN, KEY.public_key()))
    with tempfile.TemporaryDirectory() as tmp:
        async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
            upstream = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            argv = ["relay", "--upstream", upstream, "--listen", f"127.0.0.1:{args.port}"]
            argv += ["--key", key, "--state", tmp, "--max-subscribers", str(args.subscribers)]
            relay = subprocess.Popen(
                [sys.executable, "-m", "verifier.cli", *argv], stdout=subprocess.DEVNULL
            )
            try:
                await publish(1)  # start-up, and the first frame, are not steady state
                await asyncio.sleep(2)
                cpu0 = cpu_seconds(relay.pid)
                await publish(args.frames)
                alone = cpu_seconds(relay.pid) - cpu0
                ctx = get_context("spawn")
                ready, received = ctx.Event(), ctx.Value("q", 0)
                url = f"ws://127.0.0.1:{args.port}/roots"
                url += f"?{args.choice}" if args.choice else ""
                holder = ctx.Process(
                    target=subscribers, args=(url, args.subscribers, ready, received)
                )
                holder.start()
                await asyncio.to_thread(ready.wait, 60)
                cpu0 = cpu_seconds(relay.pid)
                await publish(args.frames)
                shared = cpu_seconds(relay.pid) - cpu0
                holder.kill()
            finally:
                relay.terminate()
                relay.wait()
    delivered = received.value
    expected = args.frames * args.subscribers
    per = 1e6 / (args.frames * args.subscribers)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; SHA-256 {hash_microseconds():.2f} us")
    print(f"frame: {len(stream[-1])} bytes ({args.assets} assets); {args.rate:g} frames/s")
    print(f"subscribers ask for: {args.choice or 'every asset'}")
    print(f"{'relay CPU per frame, no subscriber (us)':<64} {alone * 1e6 / args.frames:>10.0f}")
    print(f"{f'relay CPU per frame, {args.subscribers} subscribers (us)':<64} "
          f"{shared * 1e6 / args.frames:>10.0f}")  # fmt: skip
    print(f"{'  per frame per subscriber, all of it (us)':<64} {shared * per:>10.1f}")
    print(f"{'  per frame per subscriber, what subscribers add (us)':<64} "
          f"{(shared - alone) * per:>10.1f}")  # fmt: skip
    print(f"frames delivered: {delivered} of {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--assets", type=int, default=4)
    parser.add_argument("--port", type=int, default=18766, help="the relay's port")
    parser.add_argument("--choice", default="", help="e.g. assets=A001,A002 or only=checkpoints")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
