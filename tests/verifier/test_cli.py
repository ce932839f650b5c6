"""solvency-verify proof, checkpoint and consistency end to end: results, exit codes,
JSON on success and failure, --version and --help. ``watch``: test_cli_watch.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import reference
from tests.verifier.fakelog import KEY, VKEY, FakeLog, user_proof
from tests.verifier.witnesses import K1, K2, NOW, cosigned
from verifier import cli, quorum, rfc9162
from verifier.checkpoint import verifier_key_for
from verifier.cli import main
from verifier.display import format_amount
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.version import __version__

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
KEY_FILE = str(VECTORS / "verifier-key.txt")
VALID = str(VECTORS / "proof-valid.json")  # BTC solvent, ETH unproven
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
INVALID_CASES = MANIFEST["invalid"]


def manifest_args(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The command line for a manifest case (PROTOCOL §8), its clock set to ``now``."""
    args = ["proof", str(VECTORS / case["file"]), "--key", str(VECTORS / case.get("key", KEY_FILE))]
    args += ["--user", case["user"]] if "user" in case else []
    for name in case.get("witnesses", ()):
        args += ["--witness", str(VECTORS / name)]
    args += ["--quorum", str(case["quorum"])] if "quorum" in case else []
    if "now" in case:
        monkeypatch.setattr(quorum, "clock", lambda: case["now"])
    return args


def solvent_proof(tmp_path: Path) -> str:
    """A proof file for alice in a record whose every asset is solvent."""
    timestamp = 1_790_000_000_000
    levels = reference.build("BTC", 2, {1: ("alice", 150), 2: ("bob", 50)})
    root, total = levels[-1][0]
    sources = (ReserveSource("cold", 1000, timestamp - 500),)
    asset = AssetState("BTC", 8, 2, root, total, 1000, Status.SOLVENT, sources)
    data = EpochRecord(0, timestamp, 60_000, (asset,)).encode()
    message = FakeLog().append(data)
    leaf = (1, 150, tuple(reference.path(levels, 1)))
    proof = user_proof(message, "alice", reference.salt("alice"), {"BTC": leaf})
    (tmp_path / "alice.json").write_text(proof.to_json())
    return str(tmp_path / "alice.json")


def test_format_amount() -> None:
    assert format_amount(150_000_000, 8) == "1.5"
    assert format_amount(1, 8) == "0.00000001"
    assert format_amount(0, 8) == "0"
    assert format_amount(2**64 - 1, 0) == str(2**64 - 1)


def test_proof_solvent_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proof", solvent_proof(tmp_path), "--key", str(VKEY), "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "0.0000015" in out and "custodian solvent in every asset" in out


def test_proof_included_but_not_solvent_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proof", VALID, "--key", KEY_FILE]) == cli.EXIT_NOT_SOLVENT == 4
    out = capsys.readouterr().out
    assert "VALID" in out and "1.5" in out
    assert "WARNING: not every asset is proven solvent: ETH unproven" in out


def test_proof_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["proof", VALID, "--key", KEY_FILE, "--json"]
    assert main([*args, "--user", "alice"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert (doc["valid"], doc["exit"], doc["solvent"]) == (True, 4, False)
    assert doc["epoch"] == 1 and doc["assets"][0] == {
        "asset": "BTC",
        "balance": "1.5",
        "liabilities": "991.500025",
        "reserves": "1000",
        "status": "solvent",
    }


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c["file"])
def test_proof_invalid_names_the_check_once(
    case: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1, the check named once on stderr, and with --json one JSON result on stdout."""
    args = manifest_args(case, monkeypatch)
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"INVALID {case['expect']}: ")
    assert captured.err.count(case["expect"] + ":") == 1
    assert main([*args, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"valid": False, "exit": 1, "check": case["expect"], "reason": doc["reason"]}
    assert not doc["reason"].startswith(case["expect"] + ":")


def test_exit_codes_usage_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    usage = [
        ["proof", str(tmp_path / "missing.json"), "--key", KEY_FILE],
        ["proof", VALID, "--key", "junk+key"],
        ["proof", "--key", KEY_FILE],
        ["proof", "--url", "ftp://example.com", "--user", "a", "--token", "t", "--key", KEY_FILE],
        ["frobnicate"],
        ["watch", "ws://127.0.0.1:1", "--key", KEY_FILE, "--state", "s", "--max-silence", "0"],
    ]
    for args in usage:
        assert main(args) == cli.EXIT_USAGE == 2, args
        assert main([*args, "--json"]) == 2, args
        doc = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert (doc["valid"], doc["exit"], doc["error"]) == (None, 2, "usage"), args
    assert main(["proof", VALID, "--key", KEY_FILE, "--user", "bob"]) == cli.EXIT_INVALID == 1
    assert "INVALID user-mismatch:" in capsys.readouterr().err
    other = (VECTORS / "other-key.txt").read_text().strip()
    assert main(["proof", VALID, "--key", other]) == 1
    assert "INVALID unknown-key:" in capsys.readouterr().err


def test_unreachable_prover_is_an_operational_error(
    unused_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    args = ["proof", "--url", url, "--user", "alice", "--token", "t", "--key", KEY_FILE]
    assert main([*args, "--json"]) == cli.EXIT_ERROR == 3
    captured = capsys.readouterr()
    assert captured.err.startswith("error: cannot reach")
    doc = json.loads(captured.out)
    assert (doc["valid"], doc["exit"], doc["error"]) == (None, 3, "operational")


def test_a_bug_of_ours_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "verify_proof", broken)
    monkeypatch.delenv("SOLVENCY_DEBUG", raising=False)
    assert main(["proof", VALID, "--key", KEY_FILE]) == 3
    assert capsys.readouterr().err == "error: internal error: RuntimeError: boom\n"
    assert main(["--debug", "proof", VALID, "--key", KEY_FILE]) == 3
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("SOLVENCY_DEBUG", "1")
    assert main(["proof", VALID, "--key", KEY_FILE]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_version_and_the_exit_table_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"solvency-verify {__version__}\n"
    for argv in (["--help"], ["watch", "--help"], ["proof", "--help"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "exit status" in out
        assert all(f"\n  {code}  " in out for code in range(5)), out
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert cli.EXIT_TABLE in readme, "the README's exit table must be cli.EXIT_TABLE"


def test_untrusted_names_are_escaped_for_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = "evil.example/\u202elog"  # a right-to-left override in the log's name
    log = FakeLog(KEY, origin)
    log.append()
    (tmp_path / "cp").write_bytes(log.checkpoint(1))
    key = str(verifier_key_for(origin, KEY.public_key()))
    assert main(["checkpoint", str(tmp_path / "cp"), "--key", key]) == 0
    out = capsys.readouterr().out
    assert "evil.example/\\u202elog" in out and "\u202e" not in out
    assert main(["checkpoint", str(tmp_path / "cp"), "--key", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["origin"] == origin


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


def test_verifier_stands_alone(tmp_path: Path) -> None:
    """The verifier imports and runs where prover, storage and their dependencies cannot."""
    code = (
        "import sys\n"
        "for m in ('prover', 'storage', 'numpy', 'sqlalchemy', 'pymerkle', 'alembic',\n"
        "          'tqdm', 'msgspec', 'psycopg'):\n"
        "    sys.modules[m] = None\n"
        "import verifier.watch, verifier.relay\n"
        "from verifier.cli import main\n"
        f"assert main(['watch', 'ws://127.0.0.1:9', '--key', {KEY_FILE!r},\n"
        f"             '--state', {str(tmp_path)!r}, '--binary']) == 2\n"
        f"sys.exit(main(['proof', {VALID!r}, '--key', {KEY_FILE!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 4, result.stderr  # valid; ETH is unproven
    assert "VALID" in result.stdout
    # without msgspec (the binary extra), watch --binary is a usage error
    assert "--binary needs msgspec: install solvency-stream-verifier[binary]" in result.stderr


def test_proof_cosigned_vector(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's cosigned proof passes with its quorum (exit 4: ETH is unproven)."""
    args = manifest_args(MANIFEST["cosigned"], monkeypatch)
    assert main([*args, "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["cosigned_by"] == [
        {"name": "witness-a.example", "time": "2026-09-21T14:13:23Z"},
        {"name": "witness-b.example", "time": "2026-09-21T14:13:24Z"},
    ]
    assert main(args) == 4
    out = capsys.readouterr().out
    assert "cosigned by witness-a.example, witness-b.example (a quorum of 2 required)" in out
    assert main(["proof", VALID, "--key", KEY_FILE, "--json"]) == 4
    assert json.loads(capsys.readouterr().out)["cosigned_by"] == []


def test_witness_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--quorum needs --witness keys and at most their number; every key must parse; a
    witness counts once."""
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "keys").write_text(f"{K1}\n\n{K2}\n")
    commands = [
        ["proof", VALID, "--key", KEY_FILE],
        ["checkpoint", str(VECTORS / "checkpoint.txt"), "--key", KEY_FILE],
        ["watch", "ws://127.0.0.1:1", "--key", KEY_FILE, "--state", str(tmp_path / "s")],
    ]
    bad = [
        (["--quorum", "1"], "--quorum needs --witness"),
        (["--witness", str(K1), "--quorum", "2"], "give 1 to 1"),
        (["--witness", str(tmp_path / "keys"), "--quorum", "3"], "give 1 to 2"),
        (["--witness", str(K1), "--quorum", "0"], "give 1 to 1"),
        (["--witness", str(K1), "--witness", str(K1)], "two keys of w1.example"),
        (["--witness", "w1.example+00000000+AAAA"], "--witness:"),
        (["--witness", str(VKEY)], "0x04"),  # a log's key is not a witness's
        (["--witness", str(tmp_path / "empty")], "no key in it"),
        (["--witness", str(K1), "--quorum", "x"], "invalid int"),
    ]
    for command in commands:
        for extra, message in bad:
            assert main([*command, *extra]) == 2, (command, extra)
            assert message in capsys.readouterr().err, (command, extra)
    assert not (tmp_path / "s").exists()


def test_checkpoint_with_witnesses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare checkpoint has no record: a cosignature is dated at most 60 s after the
    clock, with no lower bound."""
    monkeypatch.setattr(quorum, "clock", lambda: NOW)
    log = FakeLog()
    log.append()
    note = log.checkpoint(1)
    witnesses = ["--witness", str(K1), "--witness", str(K2)]
    cases = [
        (cosigned(note, ("w1.example", 0), ("w2.example", NOW + 60)), 0, None),
        (cosigned(note, ("w1.example", NOW)), 1, "witness-quorum"),
        (cosigned(note, ("w1.example", NOW), ("w2.example", NOW + 61)), 1, "witness-time"),
        (cosigned(note, ("w1.example", NOW), ("w2.example", NOW), body=b"x\n"), 1, None),
    ]
    for i, (data, code, check) in enumerate(cases):
        (tmp_path / f"cp{i}").write_bytes(data)
        args = ["checkpoint", str(tmp_path / f"cp{i}"), "--key", str(VKEY), *witnesses, "--json"]
        assert main(args) == code, i
        doc = json.loads(capsys.readouterr().out)
        if code == 0:
            assert [c["name"] for c in doc["cosigned_by"]] == ["w1.example", "w2.example"]
        else:
            assert doc["check"] == (check or "witness-signature-invalid"), i
    assert main(["checkpoint", str(tmp_path / "cp1"), "--key", str(VKEY), "--json"]) == 0
    assert main(["checkpoint", str(tmp_path / "cp1"), "--key", str(VKEY), *witnesses[:2]]) == 0
    assert "cosigned by w1.example (a quorum of 1 required)" in capsys.readouterr().out
