"""/admin/export: its own token, output only under export_dir, never over a file
it did not create, escaped file names (prover/export.py), and the CLI over it."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from prover.cli import main
from prover.config import load_config
from prover.engine import Engine
from prover.errors import ProverError
from prover.export import MAX_ESCAPED, create_export_dir, proof_file_name, write_new_file
from tests.prover.test_engine import balances
from tests.prover.test_server import AUTH, serve

ADMIN = {"Authorization": "Bearer admin-token"}
IDS = st.characters(exclude_categories=("Cs",))  # anything UTF-8 can carry
HOSTILE_IDS = ["..", ".", "../../escape", "a/b", "-rf", ".hidden", "%2F", "+sha256-00", "é/…"]

# file names


def _decode(name: str) -> str:
    """The left inverse of the short form: percent-decoding, strictly."""
    assert name.endswith(".json")
    return urllib.parse.unquote(name[: -len(".json")], errors="strict")


@given(st.text(IDS, min_size=1, max_size=300))
def test_proof_file_names_are_safe_and_injective(user: str) -> None:
    name = proof_file_name(user)
    assert not {"/", "\\", "\0"} & set(name) and name not in (".", "..")
    assert name[0] not in ".-" and name.endswith(".json")
    assert len(name.encode()) <= MAX_ESCAPED + len(".json") < 255
    if name.startswith("+sha256-"):  # the long form: never produced by the short one
        assert len(user.encode()) > MAX_ESCAPED // 3
    else:
        assert _decode(name) == user  # a left inverse: no two ids share a name
        assert "+" not in name


@given(st.lists(st.text(IDS, min_size=1, max_size=120), min_size=2, max_size=20, unique=True))
def test_distinct_ids_get_distinct_names(users: list[str]) -> None:
    assert len({proof_file_name(u) for u in users}) == len(users)


def test_proof_file_name_examples() -> None:
    assert proof_file_name("alice@example.com") == "alice@example.com.json"
    assert proof_file_name("..") == "%2E..json"
    assert proof_file_name("../x") == "%2E.%2Fx.json"
    assert proof_file_name("-rf") == "%2Drf.json"
    assert proof_file_name("a%b") == "a%25b.json"
    assert proof_file_name("é") == "%C3%A9.json"
    assert proof_file_name("x" * 201).startswith("+sha256-")
    assert proof_file_name("x" * 200) == "x" * 200 + ".json"


def test_export_dirs_and_files_are_new(tmp_path: Path) -> None:
    first = create_export_dir(tmp_path / "exports", 7)
    (tmp_path / "exports" / "epoch-7-3").symlink_to(tmp_path / "elsewhere")
    second, third = (create_export_dir(tmp_path / "exports", 7) for _ in range(2))
    assert (first.name, second.name, third.name) == ("epoch-7", "epoch-7-2", "epoch-7-4")
    assert stat.S_IMODE(first.stat().st_mode) & 0o027 == 0
    write_new_file(first / "a.json", b"{}")
    assert stat.S_IMODE((first / "a.json").stat().st_mode) & 0o137 == 0
    with pytest.raises(ProverError, match="never overwrites"):
        write_new_file(first / "a.json", b"changed")
    (first / "link.json").symlink_to(tmp_path / "target")
    with pytest.raises(ProverError):
        write_new_file(first / "link.json", b"{}")
    assert (first / "a.json").read_bytes() == b"{}" and not (tmp_path / "target").exists()


# the daemon


async def _wait_for_epoch_with(engine: Engine, updates: int) -> None:
    while engine.metrics.updates < updates or engine._intake.pending:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the epoch holding them close


async def _export(host: str, request: object = None) -> list[dict[str, object]]:
    async with connect(f"ws://{host}/admin/export", additional_headers=ADMIN) as ws:
        await ws.send(json.dumps({"type": "export"} if request is None else request))
        return [json.loads(m) async for m in ws]


def test_the_network_names_no_path_and_nothing_is_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exports, elsewhere = tmp_path / "exports", tmp_path / "elsewhere"
    victim = tmp_path / "victim.json"
    victim.write_text("precious")

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            rows = [(i + 1, user, "BTC", i + 1) for i, user in enumerate(HOSTILE_IDS)]
            await producer.send(balances("core", *rows))
            assert json.loads(await producer.recv())["type"] == "ack"
        await _wait_for_epoch_with(engine, len(HOSTILE_IDS))
        for request in ({"out": str(elsewhere)}, {"type": "export", "out": str(elsewhere)}, 7):
            (reply,) = await _export(host, request)
            assert reply["code"] == "bad-request"
        # someone made the directory the export would take, with a user's file in it
        epoch = engine.metrics.epoch
        exports.mkdir()
        (exports / f"epoch-{epoch}").mkdir()
        (exports / f"epoch-{epoch}" / proof_file_name("..")).symlink_to(victim)
        done = (await _export(host))[-1]
        assert done["type"] == "done" and done["files"] == len(HOSTILE_IDS)
        assert done["dir"] == str(exports / f"epoch-{done['epoch']}-2")
        again = (await _export(host))[-1]
        assert again["dir"] != done["dir"]

    with caplog.at_level(logging.INFO):
        serve(tmp_path, scenario, admin_token="admin-token")
    assert victim.read_text() == "precious" and not elsewhere.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("prover.db")) == [
        "exports",
        "victim.json",
    ]
    written = sorted(exports.glob("epoch-*-2/*"))
    assert sorted(p.name for p in written) == sorted(proof_file_name(u) for u in HOSTILE_IDS)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o137 == 0  # at most 0640
        assert json.loads(path.read_text())["user"] in HOSTILE_IDS
    assert "Traceback" not in caplog.text


def test_an_export_that_cannot_be_written_is_refused_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "exports").write_text("a file, not a directory")

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", (1, "alice", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        await _wait_for_epoch_with(engine, 1)
        (reply,) = await _export(host)
        assert reply["code"] == "export-failed" and "exports" in str(reply["message"])

    serve(tmp_path, scenario, admin_token="admin-token")
    assert "export failed" in caplog.text and "Traceback" not in caplog.text


def test_no_admin_token_refuses_everyone(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        from websockets.exceptions import InvalidStatus

        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            with pytest.raises(InvalidStatus):
                async with connect(f"ws://{host}/admin/export", additional_headers=headers):
                    pass

    serve(tmp_path, scenario)  # admin_token unset


# the command


def test_export_proofs_command(
    tmp_path: Path,
    unused_port: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "init", "--assets", "BTC:8,ETH:9"]) == 0
    capsys.readouterr()
    config = load_config(data)
    assert config.admin_token and config.admin_token != config.ingest_token
    assert config.export_path == data / "exports"
    cli = ["--data-dir", str(data), "--port", str(unused_port), "export-proofs"]

    assert main(cli) == 3  # no daemon
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the daemon") and err.count("\n") == 1

    async def scenario(engine: Engine, host: str) -> None:
        async with connect(f"ws://{host}/ingest", additional_headers=AUTH) as producer:
            await producer.send(balances("core", (1, "alice", "BTC", 5)))
            assert json.loads(await producer.recv())["type"] == "ack"
        await _wait_for_epoch_with(engine, 1)
        port = host.rsplit(":", 1)[1]
        args = ["--data-dir", str(data), "--port", port, "export-proofs"]
        assert await asyncio.to_thread(main, args) == 0
        out = capsys.readouterr().out
        assert out.startswith("wrote 1 proofs of epoch") and str(data / "exports") in out
        monkeypatch.setenv("SOLVENCY_ADMIN_TOKEN", "another")
        assert await asyncio.to_thread(main, args) == 2  # a wrong token: configuration
        err = capsys.readouterr().err
        assert err.startswith("error: the daemon refused admin_token") and err.count("\n") == 1

    daemon_db = f"sqlite:///{tmp_path / 'daemon.db'}"
    serve(tmp_path, scenario, data_dir=data, database_url=daemon_db, admin_token=config.admin_token)
    (directory,) = (data / "exports").iterdir()
    assert [p.name for p in directory.iterdir()] == ["alice.json"]
