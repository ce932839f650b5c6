"""Witness benchmark on loopback: the prover daemon with ``--witnesses``
witness processes (``solvency-verify witness``), 1 epoch/s, ``--rate``
balance updates/s offered by bench_stream.py's producers.

    python benchmarks/bench_witness.py [--witnesses 3] [--quorum -1] [--rate 100000]
                                       [--seconds 30] [--accounts 300000]

Reports, over the epochs closed while the rate is offered (after ``WARM_UP``):
the delay the witnesses add to each epoch, from its commit to its publication
with the quorum's cosignatures (the daemon logs it per epoch), p50/p99 and
the largest; the epochs published without the quorum; and each witness
process's CPU time as a share of one core. Targets (issue 16): p99 added
delay at most 50 ms, each witness at most 2% of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_stream import cpu_seconds, load_accounts, pct, produce_all, start_daemon
from machine import cpu_model

from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from verifier.checkpoint import verifier_key_for

WARM_UP = 3  # epochs after the rate starts that are not timed
_PUBLISHED = re.compile(
    r"epoch (\d+): cosigned by (\d+) of (\d+) witnesses, published ([\d.]+) ms after its commit"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_witness(data: Path, i: int, log_key: str) -> tuple[subprocess.Popen[bytes], str, int]:
    """Witness ``i``: its key made by ``solvency-verify witness-key``, then the server."""
    key_file, port = data / f"witness-{i}.key", free_port()
    make = ["witness-key", "--name", f"w{i}.bench.local", "--out", str(key_file), "--json"]
    serve = ["witness", "--key-file", str(key_file), "--log", log_key]
    serve += ["--state", str(data / f"witness-{i}"), "--listen", f"127.0.0.1:{port}"]
    made = subprocess.run(
        [sys.executable, "-m", "verifier.cli", *make],
        capture_output=True,
        text=True,
        check=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "verifier.cli", *serve],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, json.loads(made.stdout)["witness_key"], port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"witness {i} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--witnesses", type=int, default=3)
    parser.add_argument("--quorum", type=int, default=-1, help="-1: all of them")
    parser.add_argument("--rate", type=float, default=100_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--accounts", type=int, default=300_000)
    parser.add_argument("--producers", type=int, default=2)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        data = tmp / "data"
        init = ["init", "--origin", "bench.local/solvency", "--assets", "BTC:8"]
        prover_main(["--data-dir", str(data), *init])
        config = load_config(data)
        log_key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))
        load_accounts(config.url, args.accounts)
        witnesses = []
        for i in range(1, args.witnesses + 1):
            proc, key, port = start_witness(tmp, i, log_key)
            stack.callback(lambda p=proc: (p.send_signal(signal.SIGTERM), p.wait(30)))
            witnesses.append((proc, key, port))
        os.environ["SOLVENCY_WITNESSES"] = ",".join(
            f"{key}@http://127.0.0.1:{port}" for _, key, port in witnesses
        )
        os.environ["SOLVENCY_WITNESS_QUORUM"] = str(args.quorum)
        os.environ["SOLVENCY_EPOCH_INTERVAL"] = "1"
        port = free_port()
        log_path = tmp / "daemon.log"
        with open(log_path, "wb") as log:
            daemon = start_daemon(data, port, log)
            try:
                began_log = log_path.stat().st_size
                cpu = [cpu_seconds(p.pid) for p, _, _ in witnesses]
                url = f"ws://127.0.0.1:{port}"
                started = time.monotonic()
                acked = asyncio.run(produce_all(args, url, config.ingest_token, "bench", args.rate))
                elapsed = time.monotonic() - started
                shares = [
                    (cpu_seconds(p.pid) - c) / elapsed
                    for (p, _, _), c in zip(witnesses, cpu, strict=True)
                ]
            finally:
                daemon.terminate()
                daemon.wait(60)
        with open(log_path, "rb") as f:
            f.seek(began_log)
            lines = f.read().decode(errors="replace")
        rows = [tuple(map(float, m.groups())) for m in _PUBLISHED.finditer(lines)]
        quorum = args.witnesses if args.quorum < 0 else args.quorum
        timed = rows[WARM_UP:]
        delays = [ms for _, _, _, ms in timed]
        short = sum(1 for _, got, _, _ in timed if got < quorum)
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} cores; {args.witnesses} witnesses,"
            f" quorum {quorum}; {args.rate:,.0f} updates/s offered, {acked / elapsed:,.0f}/s"
            f" acknowledged, {args.accounts:,} accounts, {elapsed:.0f} s"
        )
        print(
            f"commit to publication with the quorum, {len(delays)} epochs after {WARM_UP}"
            f" warm-up: p50 {pct(delays, 50):.1f} ms, p99 {pct(delays, 99):.1f} ms,"
            f" max {max(delays, default=float('nan')):.1f} ms; {short} published without it"
        )
        print(
            "witness CPU, share of one core: "
            + ", ".join(f"w{i} {s * 100:.2f}%" for i, s in enumerate(shares, 1))
        )


if __name__ == "__main__":
    main()
