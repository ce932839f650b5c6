"""The cosigned checkpoints the prover publishes, read by an independent
checker written from the C2SP texts alone, in JavaScript with Node's crypto
(tests/independent/c2sp_check.mjs): it must accept the log's signature and
every witness's cosignature/v1, and refuse a tampered one."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prover.engine import Engine
from tests.prover.test_witnesses import LOG, LiveWitness, deposit, frames, run
from tests.prover.test_witnesses import witnesses as witnesses  # the fixture

CHECKER = Path(__file__).parent.parent / "independent" / "c2sp_check.mjs"
VECTORS = Path(__file__).parent.parent / "vectors"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (node)")


def check(tmp_path: Path, note: str, log_key: str, witness_keys: list[str]) -> dict[str, Any]:
    request = tmp_path / "check.json"
    request.write_text(json.dumps({"note": note, "log_key": log_key, "witness_keys": witness_keys}))
    done = subprocess.run(
        ["node", str(CHECKER), str(request)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def tampered(note: str, name: str) -> str:
    """``note`` with one bit of ``name``'s cosignature flipped (still canonical base64)."""
    lines = note.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(f"\u2014 {name} "):
            raw = bytearray(base64.b64decode(line.split(" ")[2]))
            raw[-1] ^= 1
            lines[i] = f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}"
    return "\n".join(lines)


def test_published_cosignatures_pass_an_independent_checker(
    tmp_path: Path, witnesses: Callable[..., LiveWitness]
) -> None:
    w1, w2 = witnesses("w1.example"), witnesses("w2.example")
    published: list[str] = []

    async def scenario(engine: Engine) -> None:
        live = asyncio.create_task(frames(engine, None, 2))
        await asyncio.sleep(0)
        for amount in (100, 200):
            await deposit(engine, "alice", amount)
            await engine.close_epoch()
        published.extend(m.checkpoint.decode() for m in await asyncio.wait_for(live, 10))

    run(tmp_path, [w1, w2], scenario)
    keys = [str(w1.key), str(w2.key)]
    for size, note in enumerate(published, start=1):
        result = check(tmp_path, note, str(LOG), keys)
        assert result["log_signature"] and result["size"] == size and not result["invalid"]
        assert sorted(c["name"] for c in result["cosigned_by"]) == ["w1.example", "w2.example"]
    result = check(tmp_path, tampered(published[-1], "w2.example"), str(LOG), keys)
    assert result["invalid"] == ["w2.example"]
    assert [c["name"] for c in result["cosigned_by"]] == ["w1.example"]


def test_the_cosigned_vector_passes_the_independent_checker(tmp_path: Path) -> None:
    proof = json.loads((VECTORS / "proof-cosigned.json").read_text())
    log_key = (VECTORS / "verifier-key.txt").read_text().strip()
    keys = (VECTORS / "witness-keys.txt").read_text().split()
    result = check(tmp_path, proof["checkpoint"], log_key, keys)
    assert result["log_signature"] and not result["invalid"]
    assert sorted(c["name"] for c in result["cosigned_by"]) == [
        "witness-a.example",
        "witness-b.example",
    ]
