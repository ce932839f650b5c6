"""solvency-verify end to end: proof files, checkpoints, and watch against a real
WebSocket server on 127.0.0.1 serving a fake custodian's log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.verifier.fakelog import VKEY, FakeLog, record
from verifier import rfc9162
from verifier.cli import format_amount, main
from verifier.stream import EpochMessage

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
KEY_FILE = str(VECTORS / "verifier-key.txt")


def test_format_amount() -> None:
    assert format_amount(150_000_000, 8) == "1.5"
    assert format_amount(1, 8) == "0.00000001"
    assert format_amount(0, 8) == "0"
    assert format_amount(2**64 - 1, 0) == str(2**64 - 1)


def test_proof_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proof", str(VECTORS / "proof-valid.json"), "--key", KEY_FILE]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "1.5" in out and "unproven" in out


def test_proof_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["proof", str(VECTORS / "proof-valid.json"), "--key", KEY_FILE, "--json"]
    assert main([*args, "--user", "alice"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["epoch"] == 1 and doc["assets"][0] == {
        "asset": "BTC",
        "balance": "1.5",
        "liabilities": "991.500025",
        "reserves": "1000",
        "status": "solvent",
    }


@pytest.mark.parametrize(
    "case",
    json.loads((VECTORS / "manifest.json").read_text())["invalid"][:8],
    ids=lambda c: c["file"],
)
def test_proof_invalid_names_the_check(
    case: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["proof", str(VECTORS / case["file"]), "--key", KEY_FILE]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and (case["expect"] in err or case["expect"] == "format")


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proof", str(tmp_path / "missing.json"), "--key", KEY_FILE]) == 2
    assert main(["proof", str(VECTORS / "proof-valid.json"), "--key", "junk+key"]) == 2
    assert main(["proof", "--key", KEY_FILE]) == 2
    assert main(["frobnicate"]) == 2
    assert (
        main(["proof", str(VECTORS / "proof-valid.json"), "--key", KEY_FILE, "--user", "bob"]) == 1
    )
    other = (VECTORS / "other-key.txt").read_text().strip()
    assert main(["proof", str(VECTORS / "proof-valid.json"), "--key", other]) == 1
    assert "unknown-key" in capsys.readouterr().err


def test_checkpoint_and_consistency(tmp_path: Path) -> None:
    assert main(["checkpoint", str(VECTORS / "checkpoint.txt"), "--key", KEY_FILE]) == 0
    log = FakeLog()
    for _ in range(7):
        log.append()
    (tmp_path / "old").write_bytes(log.checkpoint(3))
    (tmp_path / "new").write_bytes(log.checkpoint(7))
    proof = rfc9162.consistency_proof(log.hashes, 3, 7)
    (tmp_path / "proof").write_text("\n".join(h.hex() for h in proof) + "\n")
    args = [str(tmp_path / n) for n in ("old", "new", "proof")]
    assert main(["consistency", *args, "--key", str(VKEY)]) == 0
    (tmp_path / "proof").write_text("\n".join(h.hex() for h in proof[:-1]) + "\n")
    assert main(["consistency", *args, "--key", str(VKEY)]) == 1


class FakeProver:
    """Serves /roots on 127.0.0.1 from a list of messages, in its own thread."""

    def __init__(self, messages: list[EpochMessage]) -> None:
        self.messages = messages
        self.sinces: list[int] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        since = int(parse_qs(urlsplit(ws.request.path).query).get("since", ["0"])[0])
        self.sinces.append(since)
        for m in self.messages[since:]:
            await ws.send(m.to_json())
        await ws.wait_closed()  # then stay silent, as a stalled prover would

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeProver:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
def history() -> Iterator[FakeLog]:
    log = FakeLog()
    for _ in range(6):
        log.append()
    yield log


def watch(url: str, state: Path, *extra: str) -> int:
    return main(["watch", url, "--key", str(VKEY), "--state", str(state), "--json", *extra])


def events(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_watch_verifies_and_resumes(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(history.messages) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "4") == 0
        assert [e["epoch"] for e in events(capsys) if e["event"] == "epoch"] == [0, 1, 2, 3]
        assert watch(prover.url, tmp_path, "--max-epochs", "2") == 0
        assert [e["epoch"] for e in events(capsys) if e["event"] == "epoch"] == [4, 5]
        assert prover.sinces == [0, 4]
    assert json.loads((tmp_path / "state.json").read_text())["size"] == 6


def test_watch_catches_a_fork_across_restarts(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(history.messages[:4]) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "4") == 0
    twin = FakeLog()
    twin.append()
    twin.append(record(1, liabilities=7))  # epoch 1 rewritten after the auditor saw it
    for _ in range(2, 6):
        twin.append()
    with FakeProver(twin.messages) as prover:
        assert watch(prover.url, tmp_path) == 1
    alarm = next(e for e in events(capsys) if e["event"] == "violation")
    assert alarm["check"] == "fork"
    evidence = json.loads(Path(alarm["evidence"]).read_text())
    assert evidence["last_verified_checkpoint"] and evidence["message"]["checkpoint"]


def test_watch_alarms_on_insolvency_and_keeps_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = FakeLog()
    log.append()
    log.append(record(1, liabilities=500))
    log.append()
    with FakeProver(log.messages) as prover:
        assert watch(prover.url, tmp_path / "a") == 1
        found = events(capsys)
        assert [e["event"] for e in found] == ["epoch", "epoch", "violation"]
        assert found[-1]["check"] == "insolvent"
        assert watch(prover.url, tmp_path / "b", "--keep-going", "--max-epochs", "3") == 1
        assert [e["event"] for e in events(capsys)].count("epoch") == 3


def test_watch_alarms_on_silence(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(history.messages[:1]) as prover:
        assert watch(prover.url, tmp_path, "--max-silence", "0.3") == 1
    assert events(capsys)[-1]["check"] == "stale-log"


def test_verifier_stands_alone(tmp_path: Path) -> None:
    """The verifier imports and runs where prover, storage and their dependencies cannot."""
    code = (
        "import sys\n"
        "for m in ('prover', 'storage', 'numpy', 'sqlalchemy', 'pymerkle', 'alembic'):\n"
        "    sys.modules[m] = None\n"
        "from verifier.cli import main\n"
        f"sys.exit(main(['proof', {str(VECTORS / 'proof-valid.json')!r}, '--key', {KEY_FILE!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "VALID" in result.stdout
