"""The operator's commands on their error paths: init whole or not at all, secrets
owner-only, one line ``error: ...`` and an exit status for every foreseeable
failure, and never a traceback (checked on real processes, daemon included)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from prover.cli import main
from prover.config import load_config
from prover.errors import ConfigError
from prover.initdir import redact_url
from storage.store import Store
from tests.prover.daemon import start_daemon

UNREACHABLE_PG = "postgresql+psycopg://prover:s3cret-pw@127.0.0.1:1/solvency"


def init(data: Path, *extra: str) -> int:
    return main(["--data-dir", str(data), *extra, "init", "--origin", "op.example/log"])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# item 3: owner-only files, refused when others can read them, no password shown


def test_init_makes_the_directory_and_its_secrets_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert init(data) == 0
    assert mode(data) == 0o700
    for name in ("config.toml", "signing.key", "prover.db"):
        assert mode(data / name) == 0o600, name
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary left beside it
    store = Store.open(load_config(data).url)  # SQLite gives -wal and -shm the file's mode
    store.ensure_asset("XRP", 6)
    assert mode(data / "prover.db-wal") == mode(data / "prover.db-shm") == 0o600
    store.close()
    assert "verifier key" in capsys.readouterr().out


def test_init_fills_an_existing_empty_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    assert init(data) == 0
    assert mode(data) == 0o700
    assert sorted(p.name for p in data.iterdir()) == [
        "config.toml",
        "prover.db",
        "routing.key",
        "signing.key",
    ]


@pytest.mark.parametrize("name", ["config.toml", "signing.key", "prover.db", "prover.db-wal"])
@pytest.mark.parametrize("command", [["status"], ["run"], ["import", "x.csv"], ["rotate-key"]])
def test_secrets_others_can_read_are_refused(
    tmp_path: Path, name: str, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    init(data)
    (data / name).touch()
    (data / name).chmod(0o644)
    capsys.readouterr()
    assert main(["--data-dir", str(data), *command]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(data / name) in line and "chmod 600" in line


def test_a_directory_others_can_enter_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    init(data)
    data.chmod(0o755)
    capsys.readouterr()
    assert main(["--data-dir", str(data), "status"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and f"chmod 700 {data}" in err


def test_database_passwords_are_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert redact_url(UNREACHABLE_PG) == UNREACHABLE_PG.replace("s3cret-pw", "***")
    assert "s3cret" not in redact_url("postgresql://u:s3cret@[bad")
    assert init(tmp_path / "data", "--database-url", UNREACHABLE_PG) == 3
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err
    assert init(tmp_path / "ok") == 0 and main(["--data-dir", str(tmp_path / "ok"), "status"]) == 0
    out = capsys.readouterr().out
    assert f"database sqlite:///{tmp_path / 'ok' / 'prover.db'}" in out


# item 18: init validates first and leaves nothing behind when it fails


@pytest.mark.parametrize(
    "origin",
    [
        "has space",
        "exämple.com/log",
        "a+b/log",
        "https://x.example/log",
        "",
        "tab\there",
        "x" * 256,
    ],
)
def test_init_refuses_an_origin_that_is_no_key_name(
    tmp_path: Path, origin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "init", "--origin", origin]) == 2
    assert "origin" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "init_args", "status"),
    [
        (["--database-url", "not a url"], [], 2),
        (["--database-url", UNREACHABLE_PG], [], 3),
        (["--database-url", "sqlite:////nonexistent-dir/x.db"], [], 3),
        ([], ["--assets", "BTC:8,BTC:8"], 2),
        ([], ["--assets", "BTC"], 2),
        ([], ["--assets", "btc:8"], 2),
        ([], ["--passphrase-env", "SOLVENCY_TEST_UNSET_VARIABLE"], 2),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_init_leaves_nothing_and_can_be_retried(
    tmp_path: Path,
    extra: list[str],
    init_args: list[str],
    status: int,
    existing: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    if existing:
        data.mkdir()
    assert main(["--data-dir", str(data), *extra, "init", *init_args]) == status
    one_error_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == (["data"] if existing else [])
    assert not existing or list(data.iterdir()) == []
    assert init(data) == 0  # not "already initialised"


def test_init_never_touches_a_directory_with_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert init(tmp_path) == 2
    assert "not empty" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert init(tmp_path / "notes.txt") == 2
    assert init(tmp_path / "missing" / "data") == 2


def test_a_config_with_a_bad_origin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('origin = "two words"\n')
    with pytest.raises(ConfigError, match="origin"):
        load_config(tmp_path)


# item 19: commands on a directory that was never initialised, missing files


@pytest.mark.parametrize(
    "command",
    [["status"], ["run"], ["import", "x.csv"], ["rotate-key"], ["proof", "a"], ["export-proofs"]],
)
def test_commands_refuse_a_directory_never_initialised(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(tmp_path), *command]) == 2
    assert "is not initialised" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no database made on the way


def test_missing_input_files_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    init(data)
    capsys.readouterr()
    missing = str(tmp_path / "missing.csv")
    for command in (["import", missing], ["run", "--follow", missing]):
        assert main(["--data-dir", str(data), *command]) == 3
        line = one_error_line(capsys.readouterr().err)
        assert line == f"error: cannot read {missing}: No such file or directory"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("b.jsonl", '{"user": "a", "asset": "BTC", "amount": 1}\n{oops\n', "b.jsonl:2: not JSON"),
        ("b.jsonl", '{"user": "a", "asset": "BTC"}\n', 'b.jsonl:1: want {"user"'),
        ("b.jsonl", "[1, 2, 3]\n", "b.jsonl:1: want"),
        ("b.jsonl", '{"user": "a", "asset": "BTC", "amount": true}\n', "amount True"),
        ("b.csv", "user,asset,amount\nalice,BTC\n", "b.csv:2: want 3 columns"),
        ("b.csv", "user,asset,amount\nalice,ETH,5\n", "asset ETH is not configured"),
        ("b.csv", "user,asset,amount\nalice,BTC,5\nbob,BTC,²\n", "b.csv:3: amount"),
        ("b.csv", b"user,asset,amount\nal\xffice,BTC,5\n", "not UTF-8"),
    ],
)
def test_import_names_the_bad_line(
    tmp_path: Path,
    name: str,
    content: str | bytes,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    main(["--data-dir", str(data), "init", "--assets", "BTC:8"])
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    capsys.readouterr()
    assert main(["--data-dir", str(data), "import", str(path)]) == 2
    assert message in one_error_line(capsys.readouterr().err)


# item 20: every command's error paths, as real processes, daemon included


def prover(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "prover.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_no_command_prints_a_traceback(tmp_path: Path, unused_port: int) -> None:
    data, fresh, loose, broken = (tmp_path / n for n in ("data", "fresh", "loose", "broken"))
    for directory in (data, loose, broken):
        assert init(directory) == 0
    (loose / "prover.db").chmod(0o644)
    (broken / "config.toml").write_text("origin = [\n")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "b.csv").write_text("user,asset,amount\nalice,BTC,5\n")
    assert main(["--data-dir", str(data), "import", str(tmp_path / "b.csv")]) == 0
    port = str(unused_port)
    d = ["--data-dir", str(data), "--port", port]
    cases: list[tuple[list[str], dict[str, str], int, str]] = [
        (["--data-dir", str(fresh), "init", "--origin", "a b"], {}, 2, "origin"),
        (["--data-dir", str(fresh), "init", "--origin", "ü.example"], {}, 2, "origin"),
        (["--data-dir", str(fresh), "--database-url", "nope", "init"], {}, 2, "database"),
        (["--data-dir", str(fresh), "--database-url", UNREACHABLE_PG, "init"], {}, 3, "database"),
        (["--data-dir", str(fresh), "init", "--assets", "BTC:x"], {}, 2, "--assets"),
        (["--data-dir", str(data), "init"], {}, 2, "already initialised"),
        *(
            (["--data-dir", str(fresh), *c], {}, 2, "not initialised")
            for c in (["status"], ["run"], ["import", "b.csv"], ["proof", "a"], ["rotate-key"])
        ),
        ([*d, "export-proofs"], {}, 3, "cannot reach the daemon"),
        ([*d, "proof", "alice"], {}, 3, "cannot reach the daemon"),
        ([*d, "import", str(tmp_path / "missing.csv")], {}, 3, "cannot read"),
        ([*d, "import", str(tmp_path)], {}, 3, "cannot read"),
        ([*d, "import", str(tmp_path / "bad.jsonl")], {}, 2, "not JSON"),
        ([*d, "run", "--follow", str(tmp_path / "missing.jsonl")], {}, 3, "cannot read"),
        ([*d, "run"], {"SOLVENCY_EPOCH_INTERVAL": "x"}, 2, "epoch_interval"),
        (["--data-dir", str(loose), "run"], {}, 2, "chmod 600"),
        (["--data-dir", str(broken), "status"], {}, 2, "config.toml"),
        (
            [*d, "status"],
            {"SOLVENCY_DATABASE_URL": "sqlite:////nonexistent-dir/x.db"},
            3,
            "database",
        ),
        ([*d, "run"], {"SOLVENCY_KEY_FILE": "missing.key"}, 2, "signing key"),
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: prover(*case[0], env=case[1]), cases))
    for (args, _, status, needle), (code, out, err) in zip(cases, results, strict=True):
        assert code == status, (args, out, err)
        assert needle in one_error_line(err), (args, err)
        assert "Traceback" not in out + err, (args, err)
    assert not fresh.exists()

    # against a running daemon: wrong tokens, a port in use, and a good export
    log = tmp_path / "daemon.log"
    env = {"SOLVENCY_MAX_INTERVAL": "0.5", "SOLVENCY_EPOCH_INTERVAL": "0.1"}
    daemon = start_daemon(data, unused_port, log, env)
    try:
        cases = [
            ([*d, "proof", "alice"], {"SOLVENCY_PROOF_SECRET": "11" * 32}, 2, "401"),
            ([*d, "export-proofs"], {"SOLVENCY_ADMIN_TOKEN": "wrong"}, 2, "refused admin_token"),
            ([*d, "export-proofs"], {"SOLVENCY_ADMIN_TOKEN": ""}, 2, "admin_token is not set"),
            ([*d, "run"], {}, 3, "cannot listen on 127.0.0.1"),
        ]
        for args, case_env, status, needle in cases:
            code, out, err = prover(*args, env=case_env)
            assert code == status, (args, out, err)
            assert needle in one_error_line(err), (args, err)
            assert "Traceback" not in out + err
        time.sleep(0.6)  # an epoch holding alice
        code, out, err = prover(*d, "export-proofs")
        assert code == 0 and f"to {data / 'exports' / 'epoch-'}" in out, err
        (export,) = (data / "exports").iterdir()
        assert [p.name for p in export.iterdir()] == ["alice.json"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    assert "Traceback" not in log.read_text()
