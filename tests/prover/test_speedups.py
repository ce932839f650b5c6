"""The optional C extensions (setup.py): built where CI runs, and turned off
by SOLVENCY_PURE_PYTHON. Their results are tested against the Python paths
in test_sumhash.py, test_tree.py and test_users.py."""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType

import pytest

import prover.tree
import prover.users


def built(module: ModuleType | None) -> ModuleType:
    """``module``, or a skip (a failure in CI, which must test it) if it is not built."""
    if module is None:
        reason = "a C extension is not built (no C compiler or OpenSSL headers at install)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must test it")
        pytest.skip(reason)
    return module


def test_both_extensions_are_loaded() -> None:
    assert built(prover.tree._C_HASHING).__name__ == "prover._sumhash"
    assert built(prover.users._C).__name__ == "prover._userindex"


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ("1", "prover._sumhash turned off: its Python path instead, prover._userindex turned off"),
        ("", "prover._sumhash, prover._userindex"),
    ],
)
def test_solvency_pure_python_turns_them_off(value: str, described: str) -> None:
    built(prover.users._C)
    code = (
        "import prover.tree, prover.users; from prover import speedups;"
        "print(prover.tree._C_HASHING is None, prover.users._C is None); print(speedups.describe())"
    )
    env = {**os.environ, "SOLVENCY_PURE_PYTHON": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == ("True True" if value else "False False")
    assert out[1].startswith(described)
