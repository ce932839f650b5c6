"""docs/ARCHITECTURE.md's module map names every module of the three
packages, and only those; every relative link of the docs resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


@pytest.mark.parametrize("package", ["verifier", "prover", "storage"])
def test_the_module_map_matches_the_code(package: str) -> None:
    section = ARCHITECTURE.split(f"### {package}/", 1)[1].split("\n### ", 1)[0]
    mapped = set(re.findall(r"^\| `([a-z0-9_]+)\.py` \|", section, re.MULTILINE))
    modules = {p.stem for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}
    assert mapped == modules


def test_relative_links_resolve() -> None:
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: {target}"
