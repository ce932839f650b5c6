"""Two honest test witnesses that cosign what they are shown (tests only)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.checkpoint import split_note
from verifier.cosignature import cosign, witness_key_for
from verifier.record import EpochRecord
from verifier.stream import EpochMessage

W1, W2 = (Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (7, 8))
K1 = witness_key_for("w1.example", W1.public_key())
K2 = witness_key_for("w2.example", W2.public_key())
PRIVATE = {K1.name: W1, K2.name: W2}
NOW = 1_790_000_100  # the verifier's clock: 100 s after the first record of tests.verifier.fakelog


def cosigned(note: bytes, *stamps: tuple[str, int], body: bytes | None = None) -> bytes:
    """``note`` with a cosignature line per ``(witness name, time)``, over its own
    body or over ``body`` (a cosignature of another checkpoint)."""
    signed = split_note(note)[0] if body is None else body
    return note + b"".join(cosign(signed, name, PRIVATE[name], t) for name, t in stamps)


def witnessed(message: EpochMessage, *names: str, delay: int = 1) -> EpochMessage:
    """``message`` with its checkpoint cosigned by ``names``, ``delay`` s after its record."""
    at = EpochRecord.decode(message.record).timestamp_ms // 1000 + delay
    note = cosigned(message.checkpoint, *((n, at) for n in names))
    return dataclasses.replace(message, checkpoint=note)
