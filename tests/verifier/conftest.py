"""Fixtures shared by the verifier's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.verifier.test_relay_support import Background


@pytest.fixture
def bg() -> Iterator[Background]:
    background = Background()
    yield background
    background.close()
