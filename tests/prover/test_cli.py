"""solvency-prover commands, and the demo as a short smoke run."""

from __future__ import annotations

import asyncio
import signal
import stat
import sys
from pathlib import Path

import pytest

from prover import demo
from prover.cli import main
from prover.config import AssetConfig, load_config
from prover.demo import main as demo_main
from storage.store import Store


def test_init_import_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert (
        main(
            [
                "--data-dir",
                str(data),
                "init",
                "--origin",
                "x.example/log",
                "--assets",
                "BTC:8,ETH:9",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "x.example/log+" in out
    assert stat.S_IMODE((data / "config.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "signing.key").stat().st_mode) == 0o600
    config = load_config(data)
    assert config.assets == (AssetConfig("BTC", 8), AssetConfig("ETH", 9))
    assert len(config.proof_secret) == 64
    assert main(["--data-dir", str(data), "init"]) == 2  # never overwrites

    (tmp_path / "b.csv").write_text("user,asset,amount\nalice,BTC,5\nbob,ETH,7\n")
    (tmp_path / "b.jsonl").write_text('{"user": "carol", "asset": "BTC", "amount": "9"}\n')
    assert main(["--data-dir", str(data), "import", str(tmp_path / "b.csv")]) == 0
    assert main(["--data-dir", str(data), "import", str(tmp_path / "b.jsonl")]) == 0
    store = Store.open(config.url)
    got = {(u, a): m for chunk in store.iter_balances() for u, a, m in chunk}
    store.close()
    assert got == {("alice", "BTC"): 5, ("bob", "ETH"): 7, ("carol", "BTC"): 9}
    assert main(["--data-dir", str(data), "status"]) == 0
    assert "no epoch yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content",
    [
        "user,amount\nalice,5\n",
        "user,asset,amount\nalice,BTC,-5\n",
        "user,asset,amount\nalice,BTC,1.5\n",
        "user,asset,amount\nalice,DOGE,5\n",
        "user,asset,amount\n,BTC,5\n",
    ],
)
def test_import_refuses_bad_files(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    main(["--data-dir", str(data), "init", "--assets", "BTC:8"])
    (tmp_path / "bad.csv").write_text(content)
    assert main(["--data-dir", str(data), "import", str(tmp_path / "bad.csv")]) == 2
    assert "error:" in capsys.readouterr().err


def test_demo_runs_the_whole_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "9", "--users", "300", "--rate", "400", "--proof-every", "4"]
    assert demo_main([*args, "--data-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "[auditor] epoch" in out and "verified" in out
    assert "[user] VALID" in out
    assert "[prover] stopped at epoch" in out


def test_the_demo_kills_a_part_that_does_not_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "STOP_SECONDS", 0.5)
    deaf = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('up', flush=True); time.sleep(60)"
    )

    async def run() -> tuple[int, int]:
        stubborn = await asyncio.create_subprocess_exec(sys.executable, "-c", deaf, stdout=-1)
        polite = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(60)"
        )
        assert stubborn.stdout is not None and await stubborn.stdout.readline() == b"up\n"
        return await asyncio.gather(
            demo.stop_child("prover", stubborn, signal.SIGTERM),
            demo.stop_child("auditor", polite, signal.SIGTERM),
        )

    assert tuple(asyncio.run(run())) == (-signal.SIGKILL, -signal.SIGTERM)
    out = capsys.readouterr().out
    assert "the prover did not stop within 0.5 s: killed" in out and "auditor" not in out


def test_rotate_key_keeps_the_old_key_co_signing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prover.keys import load_key
    from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for, verify_checkpoint

    data = tmp_path / "data"
    main(["--data-dir", str(data), "init", "--origin", "r.example/log", "--assets", "BTC:8"])
    old = load_config(data)
    assert main(["--data-dir", str(data), "rotate-key"]) == 0
    new = load_config(data)
    assert new.previous_key_file == "signing.key" and new.key_file != old.key_file
    assert new.assets == (AssetConfig("BTC", 8),) and new.ingest_token == old.ingest_token
    old_key, new_key = load_key(new.data_dir / new.previous_key_file), load_key(new.key_path)
    note = sign_note(
        Checkpoint("r.example/log", 1, bytes(32)).to_note_body(), "r.example/log", new_key, old_key
    )
    for key in (old_key, new_key):  # auditors holding either key accept the checkpoints
        verify_checkpoint(note, verifier_key_for("r.example/log", key.public_key()))
    store = Store.open(new.url)
    assert [k.active_to_ms is None for k in store.signing_keys()] == [False, True]
    store.close()


def test_rotate_key_keeps_the_operators_comments_and_tables(tmp_path: Path) -> None:
    data = tmp_path / "data"
    main(["--data-dir", str(data), "init", "--origin", "c.example/log", "--assets", "BTC:8"])
    path = data / "config.toml"
    text = (
        "# the operator's note\n"
        + path.read_text()
        + '\n[[assets]]  # ours\nid = "ETH"\ndecimals = 9\n'
    )
    path.write_text(text)
    assert main(["--data-dir", str(data), "rotate-key"]) == 0
    after = path.read_text()
    config = load_config(data)
    assert after.startswith("# the operator's note\n")
    assert '\n[[assets]]  # ours\nid = "ETH"\ndecimals = 9\n' in after
    assert f'key_file = "{config.key_file}"' in after and config.previous_key_file == "signing.key"
    assert after.replace(f'key_file = "{config.key_file}"\n', "", 1).replace(
        'previous_key_file = "signing.key"\n', ""
    ) == text.replace('key_file = "signing.key"\n', "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
