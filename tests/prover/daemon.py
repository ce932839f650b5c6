"""A real ``solvency-prover run`` in a process of its own, for the tests that
kill, signal or flood it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_daemon(
    data: Path, port: int, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the daemon on ``data`` and wait until /healthz answers; its
    standard error goes to ``log`` (or nowhere)."""
    args = [sys.executable, "-m", "prover.cli", "--data-dir", str(data), "--port", str(port)]
    with open(log or os.devnull, "wb") as err:
        proc = subprocess.Popen(
            [*args, "run"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
    wait_healthy(port, proc, log)
    return proc


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Wait until the daemon ``proc`` answers /healthz on ``port`` (60 s at
    most: a loaded CI machine starts processes slowly); kill it otherwise."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the prover did not start: " + (log.read_text() if log else ""))
