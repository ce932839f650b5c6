"""kill -9 of the prover while its tree worker builds the trees: the worker, and
every other process the prover started, exits at once instead of finishing
its work. Real processes; Linux (/proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prover.cli import main as prover_main

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
ROOT = Path(__file__).resolve().parents[2]
USERS = 600_000  # the worker builds their tree for a few seconds
GRACE = 0.5  # seconds a child may outlive its parent


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[1] == str(pid):
            found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie has exited


def assert_gone_soon(pids: list[int]) -> None:
    """Every one of ``pids`` exits within ``GRACE`` seconds."""
    died = time.monotonic()
    while left := [p for p in pids if alive(p)]:
        late = time.monotonic() - died
        if late > GRACE:
            for p in left:  # do not leave them running after the test
                os.kill(p, signal.SIGKILL)
            raise AssertionError(f"{left} still running {late:.1f} s after their parent")
        time.sleep(0.01)


def import_seconds(*modules: str) -> float:
    """CPU seconds a fresh interpreter takes to import ``modules``."""
    code = f"import {', '.join(modules)}"
    before = os.times()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    after = os.times()
    return (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )


def busy_worker(parent: subprocess.Popen[bytes], cpu: float) -> list[int]:
    """Wait until a child of ``parent`` has used ``cpu`` seconds; return all its children."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert parent.poll() is None, "the parent ended early"
        kids = children(parent.pid)
        if any(cpu_seconds(k) >= cpu for k in kids):
            return kids
        time.sleep(0.01)
    raise AssertionError("no child got busy")


BUILD = f"""
import asyncio, os, signal
from prover.periods import SaltPeriod
from prover.worker import TreeWorker

async def main():
    worker = TreeWorker()
    rows = [(f"user{{i}}", "BTC", i + 1) for i in range({USERS})]
    await worker.build(SaltPeriod(1, 0, bytes(32)), ["BTC"], [rows])
    os.kill(os.getpid(), signal.SIGKILL)  # not reached: killed during the build

asyncio.run(main())
"""


def test_the_tree_worker_exits_with_its_parent_even_while_building() -> None:
    parent = subprocess.Popen([sys.executable, "-c", BUILD], cwd=ROOT)
    try:
        kids = busy_worker(parent, cpu=0.6)  # past its imports and the rows: building
        parent.kill()
        parent.wait()
        assert_gone_soon(kids)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_kill_9_during_start_up_leaves_no_process_behind(tmp_path: Path, unused_port: int) -> None:
    data = tmp_path / "data"
    prover_main(["--data-dir", str(data), "init", "--assets", "BTC:8"])
    balances = tmp_path / "balances.csv"
    with balances.open("w") as f:
        f.write("user,asset,amount\n")
        f.writelines(f"user{i},BTC,{i + 1}\n" for i in range(USERS))
    assert prover_main(["--data-dir", str(data), "import", str(balances)]) == 0
    args = ["--data-dir", str(data), "--port", str(unused_port), "run"]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "prover.cli", *args], cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        # Past the imports the spawned worker repeats (prover.cli's, as the
        # main module: about a second of CPU), which come before it arms its
        # parent-death signal: the worker builds the trees.
        kids = busy_worker(daemon, cpu=import_seconds("prover.cli", "prover.worker") + 0.4)
        daemon.kill()
        daemon.wait()
        assert_gone_soon(kids)
    finally:
        if daemon.poll() is None:
            daemon.kill()
