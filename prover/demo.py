"""A live demo of the whole loop on one machine (README, first command).

    python -m prover.demo [--users 10000] [--rate 2000] [--seconds 0] [--data-dir demo-data]

Starts, each as its own process: the prover daemon on a fresh SQLite data
directory, and an auditor (``solvency-verify watch``). In this process, a
synthetic ledger streams balance changes for ``--users`` users in 4 assets at
``--rate`` updates per second, and reserve sources report; the ETH hot wallet
goes silent for a while, so the auditor sees ETH turn UNPROVEN and recover.
Every 10 s (``--proof-every``) a user fetches and verifies their proof with ``solvency-verify``.
Ctrl-C (or ``--seconds``) stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from prover.tokens import user_token
from verifier.checkpoint import verifier_key_for

ASSETS = {"BTC": 8, "ETH": 9, "USDT": 6, "SOL": 9}
TYPICAL = {"BTC": 5 * 10**6, "ETH": 2 * 10**8, "USDT": 10**9, "SOL": 3 * 10**9}
STALE_FROM, STALE_TO = 20.0, 45.0  # seconds into the demo: ETH hot wallet silent


STOP_SECONDS = 30  # Ctrl-C: how long each part may take to stop before it is killed
_relays: set[asyncio.Task[None]] = set()  # keep references until the demo ends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def relay(name: str, stream: asyncio.StreamReader) -> None:
    """Print a child's output, each line tagged with its role."""
    while line := await stream.readline():
        print(f"[{name}] {line.decode(errors='replace').rstrip()}", flush=True)


async def spawn(name: str, *args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the others in order
    )
    assert proc.stdout is not None
    _relays.add(asyncio.create_task(relay(name, proc.stdout)))
    return proc


class Ledger:
    """The custodian's synthetic books: balances it streams and reserves it reports."""

    def __init__(self, users: int, rng: random.Random) -> None:
        self.rng = rng
        self.users = [f"user{i:05d}" for i in range(users)]
        self.balances = {(u, a): rng.randrange(TYPICAL[a] * 2) for u in self.users for a in ASSETS}
        self.seq = 0
        self.reserve_seq = {"cold-wallet": 0, "hot-wallet": 0}

    def balance_message(self, rows: list[tuple[str, str, int]]) -> str:
        updates = []
        for user, asset, amount in rows:
            self.seq += 1
            updates.append({"seq": self.seq, "user": user, "asset": asset, "amount": str(amount)})
        return json.dumps({"type": "balances", "source": "core-ledger", "updates": updates})

    def changes(self, count: int) -> list[tuple[str, str, int]]:
        rows = []
        for _ in range(count):
            key = (self.rng.choice(self.users), self.rng.choice(list(ASSETS)))
            self.balances[key] = max(
                0, self.balances[key] + self.rng.randint(-1, 1) * TYPICAL[key[1]] // 10
            )
            rows.append((*key, self.balances[key]))
        return rows

    def reserve_message(self, source: str, share: float, elapsed: float) -> str | None:
        now_ms = int(time.time() * 1000)
        updates = []
        for asset in ASSETS:
            if source == "hot-wallet" and asset == "ETH" and STALE_FROM <= elapsed < STALE_TO:
                continue  # the ETH hot wallet has gone quiet
            total = sum(v for (_, a), v in self.balances.items() if a == asset)
            self.reserve_seq[source] += 1
            updates.append(
                {
                    "seq": self.reserve_seq[source],
                    "asset": asset,
                    "amount": str(int(total * 1.2 * share)),
                    "as_of_ms": now_ms,
                }
            )
        return json.dumps({"type": "reserves", "source": source, "updates": updates})


async def produce(url: str, token: str, ledger: Ledger, rate: int, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"{url}/ingest", additional_headers=headers, max_size=None) as ws:

        async def send(message: str | None) -> None:
            if message is None:
                return
            await ws.send(message)
            reply = json.loads(await ws.recv())
            if reply["type"] != "ack":
                print(f"[ledger] refused: {reply}", flush=True)

        rows = [(u, a, v) for (u, a), v in ledger.balances.items()]
        for start in range(0, len(rows), 10_000):
            await send(ledger.balance_message(rows[start : start + 10_000]))
        print(f"[ledger] loaded {len(rows):,} balances of {len(ledger.users):,} users", flush=True)
        began = time.monotonic()
        tick = 0
        while not stop.is_set():
            elapsed = time.monotonic() - began
            await send(ledger.balance_message(ledger.changes(max(1, rate // 4))))
            if tick % 8 == 0:
                await send(ledger.reserve_message("cold-wallet", 0.7, elapsed))
                await send(ledger.reserve_message("hot-wallet", 0.3, elapsed))
            if tick % 20 == 0:
                print(f"[ledger] {ledger.seq:,} balance updates sent", flush=True)
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def check_proofs(
    url: str, key: str, secret: str, ledger: Ledger, every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass
        user = ledger.rng.choice(ledger.users)
        print(f"[user] {user} fetches and verifies their proof:", flush=True)
        proc = await spawn(
            "user",
            "-m",
            "verifier.cli",
            "proof",
            "--url",
            url,
            "--user",
            user,
            "--token",
            user_token(secret, user),
            "--key",
            key,
        )
        try:
            await proc.wait()
        finally:  # cancelled at a stop that found it still running
            if proc.returncode is None:
                proc.kill()


async def stop_child(name: str, proc: asyncio.subprocess.Process, sig: signal.Signals) -> int:
    """Send ``sig``, then kill ``proc`` if it has not exited within ``STOP_SECONDS``."""
    if proc.returncode is None:
        proc.send_signal(sig)
    try:
        return await asyncio.wait_for(proc.wait(), STOP_SECONDS)
    except TimeoutError:
        print(f"[demo] the {name} did not stop within {STOP_SECONDS} s: killed", flush=True)
        proc.kill()
        return await proc.wait()


async def wait_healthy(port: int, prover: asyncio.subprocess.Process) -> None:
    for _ in range(600):
        if prover.returncode is not None:
            raise SystemExit("the prover did not start")
        try:
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{port}/healthz", None, 1
            )
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise SystemExit("the prover did not become healthy")


async def demo(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    assets = ",".join(f"{a}:{d}" for a, d in ASSETS.items())
    prover_main(
        ["--data-dir", str(data), "init", "--origin", "demo.localhost/solvency", "--assets", assets]
    )
    os.environ["SOLVENCY_MAX_RESERVE_AGE"] = "10"  # short enough to see a source go stale
    config = load_config(data)
    key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    prover = await spawn(
        "prover", "-m", "prover.cli", "--data-dir", str(data), "--port", str(port), "run"
    )
    await wait_healthy(port, prover)
    auditor = await spawn(
        "auditor",
        "-m",
        "verifier.cli",
        "watch",
        url,
        "--key",
        key,
        "--state",
        str(data / "auditor"),
        "--keep-going",
        "--max-silence",
        "15",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.seconds:
        loop.call_later(args.seconds, stop.set)
    ledger = Ledger(args.users, random.Random(7))
    print(f"[demo] prover on {url}; verifier key {key}; Ctrl-C to stop", flush=True)
    tasks = [
        asyncio.create_task(produce(url, config.ingest_token, ledger, args.rate, stop)),
        asyncio.create_task(
            check_proofs(url, key, config.proof_secret, ledger, args.proof_every, stop)
        ),
    ]
    await stop.wait()
    print("[demo] stopping", flush=True)
    _, late = await asyncio.wait(tasks, timeout=STOP_SECONDS)
    for task in late:  # a reply that never came: stop waiting for it
        task.cancel()
    codes = await asyncio.gather(
        stop_child("auditor", auditor, signal.SIGINT), stop_child("prover", prover, signal.SIGTERM)
    )
    await asyncio.sleep(0.1)  # let the relays print the last lines
    alarms = " (it raised alarms, as it should have)" if codes[0] == 1 else ""
    print(f"[demo] auditor exited {codes[0]}{alarms}; prover exited {codes[1]}", flush=True)
    return 0 if codes[1] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=2_000, help="balance updates per second")
    parser.add_argument("--seconds", type=float, default=0, help="stop after S s (0: Ctrl-C)")
    parser.add_argument("--proof-every", type=float, default=10.0, help="seconds between proofs")
    parser.add_argument("--data-dir", default="demo-data")
    return asyncio.run(demo(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
