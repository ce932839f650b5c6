"""Witness cosignatures (C2SP tlog-cosignature, cosignature/v1; PROTOCOL §12)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for, verify_checkpoint
from verifier.cosignature import (
    WitnessKey,
    cosign,
    cosigned_message,
    verify_cosignatures,
    witness_key_for,
)
from verifier.errors import FormatError, VerificationError

ORIGIN = "example.com/log"
LOG = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
W1, W2, W3 = (Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (7, 8, 9))
K1, K2, K3 = (
    witness_key_for(f"w{i}.example", k.public_key()) for i, k in ((1, W1), (2, W2), (3, W3))
)
BODY = Checkpoint(ORIGIN, 3, bytes(range(32))).to_note_body()
NOTE = sign_note(BODY, ORIGIN, LOG)


def test_key_id_and_message_are_those_of_c2sp() -> None:
    raw = W1.public_key().public_bytes_raw()
    digest = hashlib.sha256(b"w1.example\n\x04" + raw).digest()
    assert K1.key_id == int.from_bytes(digest[:4], "big")
    assert str(K1).endswith("+" + base64.b64encode(b"\x04" + raw).decode())
    assert WitnessKey.parse(str(K1)) == K1
    assert cosigned_message(BODY, 1679315147) == b"cosignature/v1\ntime 1679315147\n" + BODY
    line = cosign(BODY, "w1.example", W1, 1679315147)
    raw_sig = base64.b64decode(line.decode().split(" ")[2])
    assert raw_sig[4:12] == (1679315147).to_bytes(8, "big") and len(raw_sig) == 76
    W1.public_key().verify(raw_sig[12:], cosigned_message(BODY, 1679315147))


def test_a_log_key_is_not_a_witness_key() -> None:
    log_key = str(verifier_key_for(ORIGIN, LOG.public_key()))
    with pytest.raises(FormatError, match="0x04"):
        WitnessKey.parse(log_key)


def test_quorum_of_distinct_configured_witnesses() -> None:
    note = NOTE + cosign(BODY, "w1.example", W1, 100) + cosign(BODY, "w2.example", W2, 101)
    assert verify_checkpoint(note, verifier_key_for(ORIGIN, LOG.public_key())).size == 3
    assert {c.witness for c in verify_cosignatures(note, [K1, K2, K3], 2)} == {K1, K2}
    with pytest.raises(VerificationError) as info:
        verify_cosignatures(note, [K1, K2, K3], 3)
    assert info.value.check == "witness-quorum"
    twice = NOTE + cosign(BODY, "w1.example", W1, 100) + cosign(BODY, "w1.example", W1, 102)
    with pytest.raises(VerificationError, match="witness-quorum"):
        verify_cosignatures(twice, [K1, K2], 2)  # one witness twice is one


def test_a_bad_cosignature_by_a_configured_witness_fails() -> None:
    other = Checkpoint(ORIGIN, 4, bytes(32)).to_note_body()
    forged = NOTE + cosign(other, "w1.example", W1, 100)  # signed another checkpoint
    with pytest.raises(VerificationError) as info:
        verify_cosignatures(forged, [K1], 1)
    assert info.value.check == "witness-signature-invalid"
    unknown = NOTE + cosign(other, "w9.example", W1, 100)  # not configured: ignored
    with pytest.raises(VerificationError, match="witness-quorum"):
        verify_cosignatures(unknown, [K1], 1)


def test_implausible_dates_fail() -> None:
    note = NOTE + cosign(BODY, "w1.example", W1, 1000)
    assert verify_cosignatures(note, [K1], 1, not_before=1000, not_after=1000)
    for bounds in ({"not_before": 1001}, {"not_after": 999}):
        with pytest.raises(VerificationError) as info:
            verify_cosignatures(note, [K1], 1, **bounds)
        assert info.value.check == "witness-time"
