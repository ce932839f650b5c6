"""A verifier's witness policy: which cosignatures count, and when they are plausible
(docs/PROTOCOL.md §12.3).

A checkpoint is witnessed when at least ``quorum`` distinct configured
witnesses cosigned it (``verifier.cosignature``) and every cosignature by a
configured witness is valid and dated plausibly: at most ``MAX_SKEW`` seconds
after the verifier's clock, and at least the time of the record it vouches
for, ``floor(timestamp_ms / 1000)``, minus ``MAX_SKEW`` (no lower bound when
there is no record, e.g. a bare checkpoint). A cosignature older than its
record is one a witness made before the record existed: it cannot vouch for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from verifier.cosignature import Cosignature, WitnessKey, verify_cosignatures
from verifier.errors import VerificationError

__all__ = ["MAX_SKEW", "check_quorum", "clock", "plausible_cosignatures", "require_quorum"]

MAX_SKEW = 60  # seconds a witness's clock may run ahead of the verifier's or behind the log's

clock: Callable[[], float] = time.time
"""The verifier's clock (POSIX seconds) when a caller passes no ``now``; tests replace it."""


def plausible_cosignatures(
    note: bytes,
    witnesses: Sequence[WitnessKey],
    *,
    record_ms: int | None,
    now: float | None = None,
) -> tuple[Cosignature, ...]:
    """The valid cosignatures of ``note`` by configured ``witnesses``, one per witness.

    Raises:
        FormatError: the note is malformed.
        VerificationError: ``witness-signature-invalid`` or ``witness-time``.
    """
    now = clock() if now is None else now
    not_before = None if record_ms is None else record_ms // 1000 - MAX_SKEW
    return verify_cosignatures(
        note, witnesses, 0, not_before=not_before, not_after=math.floor(now) + MAX_SKEW
    )


def require_quorum(cosignatures: Sequence[Cosignature], quorum: int) -> None:
    """Raise ``witness-quorum`` unless ``cosignatures`` (one per witness) number ``quorum``."""
    if len(cosignatures) < quorum:
        names = ", ".join(c.witness.name for c in cosignatures) or "none"
        raise VerificationError(
            "witness-quorum",
            f"{len(cosignatures)} configured witness(es) cosigned this checkpoint ({names});"
            f" {quorum} are required",
        )


def check_quorum(
    note: bytes,
    witnesses: Sequence[WitnessKey],
    quorum: int,
    *,
    record_ms: int | None,
    now: float | None = None,
) -> tuple[Cosignature, ...]:
    """Apply the whole policy to the signed checkpoint ``note``; return its valid
    cosignatures. Nothing is checked when no witness is configured.

    Raises:
        ValueError: ``quorum`` is not in ``0..len(witnesses)`` (a caller's bug).
        FormatError: the note is malformed.
        VerificationError: ``witness-signature-invalid``, ``witness-time`` or
            ``witness-quorum``, in that order.
    """
    if not 0 <= quorum <= len(witnesses):
        raise ValueError(f"a quorum of {quorum} out of {len(witnesses)} witnesses")
    if not witnesses:
        return ()
    cosignatures = plausible_cosignatures(note, witnesses, record_ms=record_ms, now=now)
    require_quorum(cosignatures, quorum)
    return cosignatures
