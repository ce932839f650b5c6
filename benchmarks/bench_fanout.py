"""The floor under the prover's fan-out: one frame written to 1,000 loopback
connections, with no prover, no ingest and no websockets framing.

    python benchmarks/bench_fanout.py [--connections 1000] [--processes 4]
                                      [--frame-bytes 1024,4096] [--rounds 30]

The connections are held by ``--processes`` processes of their own, as in
bench_stream.py's fan-out. Each round writes one frame to every connection,
four ways: through asyncio transports (what the prover does), with a bare
``os.write`` per socket, and split over 2 and 4 threads (each write gives up
the GIL, so threads could overlap the kernel's work). It prints the median
and the slowest round of each: the time the prover's loop cannot go below
on this machine while receivers share it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from typing import Any

from machine import cpu_model, hash_microseconds


class Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


def receiver(port: int, count: int, ready: Any) -> None:
    """Hold ``count`` connections to ``port`` and read whatever arrives, until killed."""

    async def hold() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            await loop.create_connection(Sink, "127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(hold())


def timed(write_all: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(median, slowest) ms of ``rounds`` rounds, 0.2 s apart so receivers drain."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        write_all()
        times.append((time.perf_counter() - began) * 1000)
        time.sleep(0.2)
    return statistics.median(times), max(times)


async def run(args: argparse.Namespace) -> None:
    transports: list[asyncio.Transport] = []

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)

    server = await asyncio.get_running_loop().create_server(Accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mp = get_context("spawn")
    workers = []
    for i in range(args.processes):
        ready = mp.Event()
        count = len(range(i, args.connections, args.processes))
        worker = mp.Process(target=receiver, args=(port, count, ready), daemon=True)
        worker.start()
        workers.append((worker, ready))
    for _, ready in workers:
        await asyncio.to_thread(ready.wait, 60)
    while len(transports) < args.connections:
        await asyncio.sleep(0.01)
    fds = [t.get_extra_info("socket").fileno() for t in transports]
    pool = ThreadPoolExecutor(4)

    def ways(frame: bytes) -> dict[str, Callable[[], object]]:
        def write(part: list[int]) -> None:
            for fd in part:
                os.write(fd, frame)

        def threads(k: int) -> Callable[[], object]:
            return lambda: list(pool.map(write, [fds[i::k] for i in range(k)]))

        return {
            "asyncio transports": lambda: [t.write(frame) for t in transports],
            "os.write": lambda: write(fds),
            "2 threads": threads(2),
            "4 threads": threads(4),
        }

    print(f"{'frame bytes':>11} {'way':>18} {'median ms':>10} {'slowest ms':>10}")
    for size in [int(b) for b in args.frame_bytes.split(",")]:
        for name, write_all in ways(b"x" * size).items():
            median, slowest = timed(write_all, args.rounds)
            print(f"{size:>11,} {name:>18} {median:>10.1f} {slowest:>10.1f}")
    pool.shutdown()
    for worker, _ in workers:
        worker.kill()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--frame-bytes", default="1024,4096")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, SHA-256 of 100 bytes"
        f" {hash_microseconds():.2f} us; {args.connections} connections in"
        f" {args.processes} processes\n"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
