"""A live demo of the whole loop on one machine (README, first command).

    python -m prover.demo [--users 10000] [--rate 2000] [--seconds 0] [--data-dir demo-data]

Starts, each as its own process: the prover daemon on a fresh SQLite data
directory, and an auditor (``solvency-verify watch``). In this process, a
synthetic ledger streams balance changes for ``--users`` users in 4 assets at
``--rate`` updates per second, and reserve sources report; the ETH hot wallet
goes silent for a while, so the auditor sees ETH turn UNPROVEN and recover.
Each reserve source signs its reports with a key of its own (made at start in
the data directory, listed as an attester in the prover's config.toml), and
the auditor checks them with ``--attester`` (docs/PROTOCOL.md §13).
Two witnesses (``solvency-verify witness``, keys made by ``solvency-verify
witness-key``) cosign every checkpoint before the prover publishes it; the
auditor and the users require both cosignatures (``--witness``, ``--quorum
2``; docs/PROTOCOL.md §12).
Every 10 s (``--proof-every``) a user fetches and verifies their proof with ``solvency-verify``.
It prints the URLs of the customer's page and the live dashboard, the keys
pinned in their fragment, to open in a browser.
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
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from websockets.asyncio.client import connect

from prover.attest import AttesterKey, generate_attester_key
from prover.cli import main as prover_main
from prover.config import load_config
from prover.keys import load_key
from prover.tokens import user_token
from verifier.checkpoint import verifier_key_for
from verifier.report import ReserveReport, sign_report

ASSETS = {"BTC": 8, "ETH": 9, "USDT": 6, "SOL": 9}
TYPICAL = {"BTC": 5 * 10**6, "ETH": 2 * 10**8, "USDT": 10**9, "SOL": 3 * 10**9}
STALE_FROM, STALE_TO = 20.0, 45.0  # seconds into the demo: ETH hot wallet silent


WITNESSES = ("witness-1.demo.localhost", "witness-2.demo.localhost")
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


async def spawn(
    name: str, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python *args`` as process ``name``, its output relayed line by line;
    ``env``: variables added to the demo's own environment for it alone."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the others in order
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.stdout is not None
    _relays.add(asyncio.create_task(relay(name, proc.stdout)))
    return proc


class Ledger:
    """The custodian's synthetic books: balances it streams and reserves it reports."""

    def __init__(self, users: int, rng: random.Random, attesters: dict[str, AttesterKey]) -> None:
        self.rng = rng
        self.attesters = attesters  # each reserve source's signing key
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
        key = self.attesters[source]
        reports = []
        for asset in ASSETS:
            if source == "hot-wallet" and asset == "ETH" and STALE_FROM <= elapsed < STALE_TO:
                continue  # the ETH hot wallet has gone quiet
            total = sum(v for (_, a), v in self.balances.items() if a == asset)
            self.reserve_seq[source] += 1
            report = ReserveReport(source, asset, int(total * 1.2 * share), now_ms)
            note = sign_report(report, key.key).decode()
            reports.append({"seq": self.reserve_seq[source], "report": note})
        return json.dumps({"type": "reserve-reports", "source": source, "reports": reports})


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
    url: str,
    key: str,
    secret: str,
    ledger: Ledger,
    every: float,
    stop: asyncio.Event,
    witnessed: list[str],
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
            *witnessed,
        )
        try:
            await proc.wait()
        finally:  # cancelled at a stop that found it still running
            if proc.returncode is None:
                proc.kill()


def page_fragment(key: str, witness_flags: list[str]) -> str:
    """The browser pages' URL fragment (docs/PROTOCOL.md §11.6) pinning the log's
    key and the witnesses and quorum of ``witness_flags`` (``--witness K ...
    --quorum Q``, as ``start_witnesses`` returns them)."""
    pairs = [("key", key), *zip(witness_flags[::2], witness_flags[1::2], strict=True)]
    return "&".join(f"{name.removeprefix('--')}={quote(value, safe='+/')}" for name, value in pairs)


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


async def start_witnesses(
    data: Path, log_key: str
) -> tuple[list[str], list[asyncio.subprocess.Process]]:
    """Each of ``WITNESSES`` as a ``solvency-verify witness`` process of its own,
    its key made by ``solvency-verify witness-key`` and listed in the prover's
    config.toml; the verifier flags that require all of them, and the processes."""
    flags, procs, ports = [], [], []
    for i, name in enumerate(WITNESSES, 1):
        key_file, port = data / f"witness-{i}.key", free_port()
        make = ["witness-key", "--name", name, "--out", str(key_file), "--json"]
        made = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "verifier.cli", *make],
            capture_output=True,
            text=True,
            check=True,
        )
        witness_key = json.loads(made.stdout)["witness_key"]
        with open(data / "config.toml", "a") as f:
            f.write(f'\n[[witnesses]]\nkey = "{witness_key}"\nurl = "http://127.0.0.1:{port}"\n')
        procs.append(
            await spawn(
                f"witness-{i}",
                *("-m", "verifier.cli", "witness", "--key-file", str(key_file), "--log", log_key),
                *("--state", str(data / f"witness-{i}"), "--listen", f"127.0.0.1:{port}"),
            )
        )
        flags += ["--witness", witness_key]
        ports.append(port)
    for port, proc in zip(ports, procs, strict=True):
        if not await listening(port, proc):
            for other in procs:
                await stop_child("witness", other, signal.SIGTERM)
            raise SystemExit("a witness did not start")
    return [*flags, "--quorum", str(len(WITNESSES))], procs


async def listening(port: int, proc: asyncio.subprocess.Process) -> bool:
    """Whether ``proc`` accepts connections on ``port`` within 30 s."""
    for _ in range(300):
        if proc.returncode is not None:
            return False
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    return False


async def demo(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    assets = ",".join(f"{a}:{d}" for a, d in ASSETS.items())
    prover_main(
        ["--data-dir", str(data), "init", "--origin", "demo.localhost/solvency", "--assets", assets]
    )
    attesters = {
        source: generate_attester_key(source, data / f"attester-{source}.key")
        for source in ("cold-wallet", "hot-wallet")
    }
    with open(data / "config.toml", "a") as f:  # the prover accepts their signed reports only
        for source, attester in attesters.items():
            f.write(f'\n[[attesters]]\nsource = "{source}"\nkey = "{attester.verifier_key}"\n')
    config = load_config(data)
    key = str(verifier_key_for(config.origin, load_key(config.key_path).public_key()))
    witnessed, witnesses = await start_witnesses(data, key)
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    prover = await spawn(
        "prover",
        *("-m", "prover.cli", "--data-dir", str(data), "--port", str(port), "run"),
        env={"SOLVENCY_MAX_RESERVE_AGE": "10"},  # short enough to see a source go stale
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
        *(arg for a in attesters.values() for arg in ("--attester", str(a.verifier_key))),
        *witnessed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.seconds:
        loop.call_later(args.seconds, stop.set)
    ledger = Ledger(args.users, random.Random(7), attesters)
    print(f"[demo] prover on {url}; verifier key {key}; Ctrl-C to stop", flush=True)
    pinned = page_fragment(key, witnessed)
    print(f"[demo] customers verify at http://127.0.0.1:{port}/verify#{pinned}", flush=True)
    print(f"[demo] live dashboard at http://127.0.0.1:{port}/dashboard#{pinned}", flush=True)
    sample = ledger.users[0]
    print(
        f"[demo] on the customers' page, try user {sample} with token"
        f" {user_token(config.proof_secret, sample)}",
        flush=True,
    )
    tasks = [
        asyncio.create_task(produce(url, config.ingest_token, ledger, args.rate, stop)),
        asyncio.create_task(
            check_proofs(url, key, config.proof_secret, ledger, args.proof_every, stop, witnessed)
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
    for i, witness in enumerate(witnesses, 1):  # after the prover: its last epoch is cosigned
        await stop_child(f"witness-{i}", witness, signal.SIGTERM)
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
