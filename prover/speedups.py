"""The prover's optional C extensions (setup.py): ``prover._sumhash`` and
``prover._userindex``. Each is loaded when it was built, unless the
environment sets ``SOLVENCY_PURE_PYTHON`` (for a comparison, or to rule
them out); without one, its module does the same work in Python, giving
the same bytes."""

from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType

__all__ = ["describe", "load"]

_LOADED: dict[str, bool] = {}  # each extension asked for: loaded or not


def load(name: str) -> ModuleType | None:
    """The extension ``prover.<name>``, or None if it is not built or turned off."""
    module = None
    if not os.environ.get("SOLVENCY_PURE_PYTHON"):
        # not built: no C compiler (or OpenSSL's headers) at install
        with contextlib.suppress(ImportError):
            module = importlib.import_module(f"prover.{name}")
    _LOADED[name] = module is not None
    return module


def describe() -> str:
    """Which extensions are loaded, for a log line."""
    loaded = [f"prover.{name}" for name, is_loaded in sorted(_LOADED.items()) if is_loaded]
    missing = [f"prover.{name}" for name, is_loaded in sorted(_LOADED.items()) if not is_loaded]
    why = "turned off" if os.environ.get("SOLVENCY_PURE_PYTHON") else "not built"
    return ", ".join(loaded + [f"{name} {why}: its Python path instead" for name in missing])
