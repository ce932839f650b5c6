"""The release version, and ``--version`` for both command lines.

``__version__`` is the single source: both distributions (``solvency-stream-verifier``
and ``solvency-stream-prover``) read it at build time (see the two pyproject.toml).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["VERIFIER_DISTRIBUTION", "VersionAction", "__version__", "installed_version"]

__version__ = "0.1.0"
VERIFIER_DISTRIBUTION = "solvency-stream-verifier"


def installed_version(distribution: str) -> str:
    """The installed ``distribution``'s version, or this source tree's when it is not
    installed (e.g. run from a checkout with ``python -m``)."""
    from importlib import metadata  # here: it costs milliseconds every command would pay

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return f"{__version__} (not installed)"


class VersionAction(argparse.Action):
    """``--version``: print ``PROG VERSION`` of ``distribution`` and exit 0.

    Unlike argparse's own ``version`` action, the version is looked up only when
    asked for.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, distribution: str) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="print the version and exit",
        )
        self.distribution = distribution

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {installed_version(self.distribution)}")
        parser.exit()
