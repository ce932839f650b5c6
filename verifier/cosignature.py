"""Witness cosignatures of checkpoints (C2SP tlog-cosignature, cosignature/v1;
docs/PROTOCOL.md §12).

A witness is an Ed25519 key with a name. Its verifier key is written
``<name>+<key id as 8 hex>+<base64(0x04 || public_key[32])>`` with
``key_id = SHA-256(name || 0x0A || 0x04 || public_key)[0:4]``: the algorithm
byte 0x04 keeps a witness key from ever verifying as a log's note key (0x01).

A cosignature is one more signature line on the checkpoint's signed note::

    — <witness name> base64(key_id[4] || u64 timestamp || ed25519 signature[64])

where the signature covers ``cosignature/v1\\ntime <timestamp>\\n`` followed by
the checkpoint body, and ``timestamp`` is POSIX seconds (at most 2**63 - 1):
the witness's statement that, at that time, this was the largest checkpoint
of the log it had verified consistent with every one before.

``verify_cosignatures`` applies a client's policy: at least ``quorum``
distinct configured witnesses cosigned, each cosignature by a configured
witness is valid (``witness-signature-invalid``), and none is dated
implausibly (``witness-time``); lines by keys not configured are ignored.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verifier.checkpoint import SIG_PREFIX, check_key_name, key_id, parse_key_text, split_note
from verifier.errors import FormatError, VerificationError

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "Cosignature",
    "WitnessKey",
    "cosign",
    "cosigned_message",
    "verify_cosignatures",
    "witness_key_for",
]

ALG_COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = 2**63 - 1
SIGNATURE_SIZE = 4 + 8 + 64  # key id, timestamp, Ed25519 signature


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A witness's Ed25519 cosigning key, with its name and key id."""

    name: str
    key_id: int
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        """Parse ``name+keyid+base64(0x04 || key)``; the key id must match."""
        name, public_key = parse_key_text(text, ALG_COSIGNATURE_V1, "witness key")
        return cls(name, key_id(name, ALG_COSIGNATURE_V1, public_key), public_key)

    def __str__(self) -> str:
        encoded = base64.b64encode(bytes((ALG_COSIGNATURE_V1,)) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{encoded}"


def witness_key_for(name: str, public_key: Ed25519PublicKey) -> WitnessKey:
    """The witness key that clients configure for the cosigner ``name``."""
    check_key_name(name)
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WitnessKey(name, key_id(name, ALG_COSIGNATURE_V1, raw), raw)


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: two header lines, then the checkpoint body."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise FormatError(f"cosignature timestamp {timestamp} is not in 0..2**63-1")
    return b"cosignature/v1\ntime %d\n" % timestamp + body


def cosign(body: bytes, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> bytes:
    """The signature line (UTF-8, newline-terminated) by which the witness
    ``name`` cosigns the checkpoint ``body`` at ``timestamp``."""
    key = witness_key_for(name, private_key.public_key())
    signature = private_key.sign(cosigned_message(body, timestamp))
    raw = key.key_id.to_bytes(4, "big") + timestamp.to_bytes(8, "big") + signature
    return f"{SIG_PREFIX}{name} {base64.b64encode(raw).decode()}\n".encode()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A valid cosignature by a configured witness."""

    witness: WitnessKey
    timestamp: int


def verify_cosignatures(
    note: bytes,
    witnesses: Sequence[WitnessKey],
    quorum: int,
    *,
    not_before: int | None = None,
    not_after: int | None = None,
) -> tuple[Cosignature, ...]:
    """Check the cosignatures of the signed checkpoint ``note`` against the
    configured ``witnesses``; return the valid ones, one per witness.

    ``not_before`` and ``not_after`` bound a plausible timestamp (POSIX
    seconds; PROTOCOL §12.3 says how a verifier sets them). The log's own
    signature is checked elsewhere (``verify_checkpoint``).

    Raises:
        FormatError: the note is malformed.
        VerificationError: ``witness-signature-invalid`` (a line that names a
            configured witness and its key id does not verify),
            ``witness-time`` (a valid cosignature dated outside the bounds), or
            ``witness-quorum`` (fewer than ``quorum`` distinct configured
            witnesses cosigned).
    """
    body, signatures = split_note(note)
    by_id = {(w.name, w.key_id): w for w in witnesses}
    valid: dict[WitnessKey, Cosignature] = {}
    for name, raw in signatures:
        witness = by_id.get((name, int.from_bytes(raw[:4], "big")))
        if witness is None:
            continue  # the log's signature, or a witness this verifier does not trust
        if len(raw) != SIGNATURE_SIZE:
            raise VerificationError(
                "witness-signature-invalid", f"cosignature by {name} is not 76 bytes"
            )
        timestamp = int.from_bytes(raw[4:12], "big")
        try:
            message = cosigned_message(body, timestamp)
            Ed25519PublicKey.from_public_bytes(witness.public_key).verify(raw[12:], message)
        except (FormatError, InvalidSignature, ValueError):
            raise VerificationError(
                "witness-signature-invalid", f"bad cosignature by witness {name}"
            ) from None
        if (not_before is not None and timestamp < not_before) or (
            not_after is not None and timestamp > not_after
        ):
            raise VerificationError(
                "witness-time",
                f"witness {name} dated its cosignature {timestamp}, outside"
                f" {not_before}..{not_after}",
            )
        valid.setdefault(witness, Cosignature(witness, timestamp))
    if len(valid) < quorum:
        raise VerificationError(
            "witness-quorum",
            f"{len(valid)} of the configured witnesses cosigned this checkpoint;"
            f" {quorum} are required",
        )
    return tuple(valid.values())
