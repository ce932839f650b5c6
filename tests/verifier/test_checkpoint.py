"""C2SP signed notes and checkpoints: the published Go vector, ours, and refusals."""

import base64
import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from verifier.checkpoint import (
    Checkpoint,
    VerifierKey,
    open_note,
    sign_note,
    verifier_key_for,
    verify_checkpoint,
)
from verifier.errors import FormatError, SolvencyError, VerificationError

# The example of golang.org/x/mod/sumdb/note's documentation.
GO_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
).encode()

TEST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
ORIGIN = "example.com/solvency/test"
VKEY = verifier_key_for(ORIGIN, TEST_KEY.public_key())


def test_go_vector() -> None:
    key = VerifierKey.parse(GO_KEY)
    assert key.key_id == 0xC74F20A3 and str(key) == GO_KEY
    assert open_note(GO_NOTE, [key]).startswith(b"If you think")


def test_sign_and_verify_checkpoint() -> None:
    cp = Checkpoint(ORIGIN, 3, bytes(range(32)))
    note = sign_note(cp.to_note_body(), ORIGIN, TEST_KEY)
    assert note.startswith(
        b"example.com/solvency/test\n3\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n"
    )
    assert verify_checkpoint(note, VKEY, ORIGIN) == cp
    assert VerifierKey.parse(str(VKEY)) == VKEY


ROOT_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # base64(bytes(range(32)))


def test_extension_lines_are_refused() -> None:
    """PROTOCOL §5: version 1 defines no extension lines, so a signed line that
    no verifier checks (here a claim of solvency) cannot ride along."""
    body = f"{ORIGIN}\n3\n{ROOT_B64}\nsolvent: yes\n".encode()
    assert _fails(sign_note(body, ORIGIN, TEST_KEY)) == "format"
    with pytest.raises(FormatError, match="extension"):
        Checkpoint.parse(body)


def test_origin_must_be_the_key_name() -> None:
    """A note signed by the key but naming another log: origin-mismatch, even
    when the caller names no origin."""
    body = Checkpoint("example.com/other", 3, bytes(32)).to_note_body()
    note = sign_note(body, ORIGIN, TEST_KEY)
    assert _fails(note) == "origin-mismatch"
    assert _fails(note, origin="example.com/other") == "origin-mismatch"
    renamed = verifier_key_for("example.com/other", TEST_KEY.public_key())
    assert _fails(sign_note(body, "example.com/other", TEST_KEY), renamed) == "ok"


def _with_pad_bit(encoded: str) -> str:
    """``encoded`` (ending in "=") with the lowest bit of its last data character
    set: a pad bit, so the decoded bytes are the same."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = encoded.rstrip("=")
    changed = body[:-1] + alphabet[alphabet.index(body[-1]) | 1] + encoded[len(body) :]
    assert changed != encoded and base64.b64decode(changed) == base64.b64decode(encoded)
    return changed


def test_non_canonical_base64_is_refused_everywhere() -> None:
    """Root, signature (of a known or an unknown signer) and verifier key must be
    the one base64 text of their bytes (RFC 4648 §3.5: pad bits zero)."""
    body = f"{ORIGIN}\n3\n{_with_pad_bit(ROOT_B64)}\n".encode()
    assert _fails(sign_note(body, ORIGIN, TEST_KEY)) == "format"
    note = sign_note(Checkpoint(ORIGIN, 3, bytes(range(32))).to_note_body(), ORIGIN, TEST_KEY)
    head, _, signature = note.decode().rstrip("\n").rpartition(" ")
    assert _fails(f"{head} {_with_pad_bit(signature)}\n".encode()) == "format"
    cosigned = note + sign_note(b"x\n", "witness", OTHER_KEY).split(b"\n\n")[1]
    assert _fails(cosigned) == "ok"
    head, _, signature = cosigned.decode().rstrip("\n").rpartition(" ")
    assert _fails(f"{head} {_with_pad_bit(signature)}\n".encode()) == "format"
    with pytest.raises(FormatError):  # 33 bytes: 44 characters, no padding is due
        VerifierKey.parse(f"{GO_KEY}=")


@given(st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32))
def test_checkpoint_body_round_trips(size: int, root: bytes) -> None:
    cp = Checkpoint(ORIGIN, size, root)
    assert Checkpoint.parse(cp.to_note_body()) == cp


def _fails(note: bytes, key: VerifierKey = VKEY, origin: str | None = None) -> str:
    try:
        verify_checkpoint(note, key, origin)
    except VerificationError as exc:
        return exc.check
    except FormatError:
        return "format"
    return "ok"


def test_refusals() -> None:
    body = Checkpoint(ORIGIN, 3, bytes(32)).to_note_body()
    note = sign_note(body, ORIGIN, TEST_KEY)
    other = verifier_key_for(ORIGIN, OTHER_KEY.public_key())
    assert _fails(note, other) == "unknown-key"
    assert _fails(sign_note(body, ORIGIN, OTHER_KEY)) == "unknown-key"
    assert _fails(note.replace(b"\n3\n", b"\n4\n")) == "signature-invalid"
    assert _fails(note, origin="elsewhere") == "origin-mismatch"
    # a signature by an unknown key next to a valid one is ignored
    extra = sign_note(body, "someone-else", OTHER_KEY).split(b"\n\n")[1]
    assert _fails(note + extra) == "ok"
    assert _fails(note.replace(b"\n\n", b"\n")) == "format"
    assert _fails(note.replace("\u2014".encode(), b"-")) == "format"
    assert _fails(note[:-1]) == "format"
    assert _fails(body + b"\n") == "format"  # no signature lines


@pytest.mark.parametrize(
    "body",
    [
        b"origin\n3\n",  # no root
        b"\n3\nAAAA\n",  # empty origin
        b"origin\n03\n" + b"A" * 43 + b"=\n",  # leading zero
        b"origin\n-3\n" + b"A" * 43 + b"=\n",
        b"origin\n3\nAAAA\n",  # short root
        b"origin\n3\n" + b"A" * 43 + b"=\n\n",  # empty extension line
        b"origin\n3\n" + b"A" * 43 + b"=",  # no final newline
    ],
)
def test_bad_checkpoint_bodies(body: bytes) -> None:
    with pytest.raises(FormatError):
        Checkpoint.parse(body)


@pytest.mark.parametrize(
    "text",
    [
        "name+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumann+c74f20a3+AhpjZBwU8OEIR6DDFvOEqqIF+xWSaqr8sMTiLNbLXRNY",  # wrong alg
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+not base64",
    ],
)
def test_bad_verifier_keys(text: str) -> None:
    with pytest.raises(FormatError):
        VerifierKey.parse(text)


@given(st.binary(max_size=300))
def test_garbage_notes_raise_only_solvency_errors(data: bytes) -> None:
    with pytest.raises(SolvencyError):
        verify_checkpoint(data, VKEY)


@given(st.text(max_size=120))
def test_garbage_keys_raise_only_format_errors(text: str) -> None:
    with contextlib.suppress(FormatError):
        VerifierKey.parse(text)
