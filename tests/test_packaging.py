"""The two distributions: the customer's and auditor's verifier alone, and the
custodian's prover, which requires the verifier at the same version."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from verifier.version import VERIFIER_DISTRIBUTION, __version__

ROOT = Path(__file__).resolve().parents[1]
VERIFIER_DIR = ROOT / "packaging" / "verifier"


def pyproject(path: Path) -> dict[str, Any]:
    return tomllib.loads((path / "pyproject.toml").read_text())


def test_verifier_wheel_holds_the_verifier_alone(tmp_path: Path) -> None:
    """Built offline with the setuptools installed here, from a copy of the tree."""
    shutil.copytree(
        VERIFIER_DIR,
        tmp_path / "packaging" / "verifier",
        ignore=shutil.ignore_patterns("*.egg-info", "build"),
    )
    shutil.copytree(
        ROOT / "verifier", tmp_path / "verifier", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(tmp_path / "packaging" / "verifier"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"solvency_stream_verifier-{__version__}-py3-none-any.whl"
    info = f"solvency_stream_verifier-{__version__}.dist-info/"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_bytes(zf.read(info + "METADATA"))
        entry_points = zf.read(info + "entry_points.txt").decode()
    sources = {f"verifier/{p.name}" for p in (ROOT / "verifier").glob("*.py")}
    web = {p.relative_to(ROOT).as_posix() for p in (ROOT / "verifier" / "web").rglob("*")}
    assert {n for n in names if not n.startswith(info)} == sources | {
        n for n in web if not (ROOT / n).is_dir()
    }
    assert meta["Name"] == VERIFIER_DISTRIBUTION and meta["Version"] == __version__
    assert sorted(meta.get_all("Requires-Dist") or []) == [
        "cryptography>=42",
        'msgspec>=0.18; extra == "binary"',
        "websockets>=17",
    ]
    lines = [line.strip() for line in entry_points.splitlines() if line.strip()]
    assert lines == ["[console_scripts]", "solvency-verify = verifier.cli:main"]


def test_one_version_and_the_prover_requires_the_same_verifier() -> None:
    prover, verifier = pyproject(ROOT)["project"], pyproject(VERIFIER_DIR)["project"]
    for config in (pyproject(ROOT), pyproject(VERIFIER_DIR)):
        assert config["project"]["dynamic"] == ["version"]
        version = config["tool"]["setuptools"]["dynamic"]["version"]
        assert version == {"attr": "verifier.version.__version__"}
    assert f"{VERIFIER_DISTRIBUTION}=={__version__}" in prover["dependencies"]
    assert verifier["dependencies"] == ["cryptography>=42", "websockets>=17"]
    assert verifier["optional-dependencies"] == {"binary": ["msgspec>=0.18"]}
    assert prover["scripts"] == {"solvency-prover": "prover.cli:main"}
    assert verifier["scripts"] == {"solvency-verify": "verifier.cli:main"}
    found = pyproject(ROOT)["tool"]["setuptools"]["packages"]["find"]
    assert found == {"include": ["prover*", "storage*"]}


def test_installed_distributions_bring_one_command_each() -> None:
    try:
        prover = metadata.distribution("solvency-stream-prover")
        verifier = metadata.distribution(VERIFIER_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pytest.skip("run from a checkout that is not installed")
    assert [e.name for e in prover.entry_points] == ["solvency-prover"]
    assert [e.name for e in verifier.entry_points] == ["solvency-verify"]
    assert prover.version == verifier.version == __version__


def test_both_commands_print_their_version(capsys: pytest.CaptureFixture[str]) -> None:
    from prover.cli import _parser as prover_parser
    from verifier.cli import _parser as verifier_parser

    for parser in (prover_parser(), verifier_parser()):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["--version"])
        assert done.value.code == 0
        assert capsys.readouterr().out == f"{parser.prog} {__version__}\n"
