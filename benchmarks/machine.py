"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import hashlib
import platform
import statistics
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hash_microseconds() -> float:
    """Microseconds per SHA-256 of 100 bytes, the median of 5 runs of 0.1 s:
    this VM's speed varies up to 2x from one minute to the next (its host's
    other tenants), so runs to compare should print it."""
    message, runs = b"x" * 100, []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(100_000):
            hashlib.sha256(message).digest()
        runs.append((time.perf_counter() - began) * 10)
    return statistics.median(runs)
