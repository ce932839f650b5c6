"""C2SP signed notes with Ed25519 and the tlog-checkpoint they carry (PROTOCOL §5).

Note layout (C2SP signed-note)::

    <body: UTF-8 text lines, each ending in "\\n">
    "\\n"
    "— <key name> <base64(key_id[4] || signature[64])>\\n"     one or more

The signature covers the body bytes. ``key_id`` is the first four bytes (a
big-endian uint32) of ``SHA-256(name || "\\n" || 0x01 || public_key)``, 0x01
being the Ed25519 algorithm byte. A verifier key is written
``<name>+<key_id as 8 hex>+<base64(0x01 || public_key)>``.

Checkpoint body (C2SP tlog-checkpoint): origin line, tree size in decimal,
base64 root hash. C2SP allows extension lines after the root; this protocol
defines none and refuses a body that has any (PROTOCOL §5), so every signed
byte of a checkpoint means something a verifier checks. The origin must be the
verifier key's name (``origin-mismatch``). Every base64 field (key, signature,
root) must be canonical (``verifier.fields.b64``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verifier.errors import FormatError, VerificationError
from verifier.fields import b64

__all__ = [
    "ALG_ED25519",
    "Checkpoint",
    "VerifierKey",
    "check_key_name",
    "format_signer_key",
    "key_id",
    "open_note",
    "parse_key_text",
    "parse_signer_key",
    "sign_note",
    "split_note",
    "verifier_key_for",
    "verify_checkpoint",
]

ALG_ED25519 = 0x01
MAX_NOTE_BYTES = 1 << 16
MAX_SIGNATURES = 100
SIG_PREFIX = "\u2014 "  # EM DASH, space
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


def check_key_name(name: str) -> None:
    """A C2SP signed-note key name: non-empty, no white space, no ``+``."""
    if not name or "+" in name or any(c.isspace() for c in name):
        raise FormatError(f"invalid key name {name!r}: non-empty, no spaces, no '+'")


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """A C2SP signed-note key id: ``SHA-256(name || 0x0A || alg || public_key)[0:4]``
    as a big-endian u32 (``alg``: 0x01 a note key, 0x04 a cosignature/v1 key)."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes((alg,)) + public_key)
    return int.from_bytes(digest.digest()[:4], "big")


def _split_key_text(text: str, alg: int, what: str) -> tuple[str, int, bytes]:
    """``<name>+<key id as 8 hex>+<base64(alg || 32 bytes)>`` as its name, key id
    and 32 bytes, checked for form and algorithm byte."""
    parts = text.strip().split("+", 2)  # the base64 may hold "+" too
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise FormatError(f"{what} must be <name>+<8 hex digits>+<base64 key>")
    check_key_name(parts[0])
    raw = b64(parts[2], what)
    if len(raw) != 33 or raw[0] != alg:
        raise FormatError(
            f"{what} is not an Ed25519 key of type 0x{alg:02x} (0x{alg:02x} || 32 bytes)"
        )
    return parts[0], int(parts[1], 16), raw[1:]


def parse_key_text(text: str, alg: int, what: str) -> tuple[str, bytes]:
    """The name and public key of a verifier key of algorithm ``alg``
    (C2SP signed-note vkey); its key id must match the name and key."""
    name, given_id, public_key = _split_key_text(text, alg, what)
    if key_id(name, alg, public_key) != given_id:
        raise FormatError(f"{what} id does not match its name and key")
    return name, public_key


SIGNER_PREFIX = "PRIVATE+KEY+"


def format_signer_key(name: str, alg: int, private_key: Ed25519PrivateKey) -> str:
    """A private key file's text in Go's note signer key form (one line):
    ``PRIVATE+KEY+<name>+<key id as 8 hex>+<base64(alg || seed[32])>``."""
    check_key_name(name)
    public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    encoded = base64.b64encode(bytes((alg,)) + private_key.private_bytes_raw()).decode()
    return f"{SIGNER_PREFIX}{name}+{key_id(name, alg, public_key):08x}+{encoded}"


def parse_signer_key(text: str, alg: int, what: str) -> tuple[str, Ed25519PrivateKey]:
    """The name and private key of ``format_signer_key``'s text; the key id
    must match the name and key. Error messages never show the key's bytes."""
    text = text.strip()
    if not text.startswith(SIGNER_PREFIX):
        raise FormatError(f"{what} file must hold {SIGNER_PREFIX}<name>+<key id>+<base64>")
    name, given_id, seed = _split_key_text(text[len(SIGNER_PREFIX) :], alg, what)
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if key_id(name, alg, public_key) != given_id:
        raise FormatError(f"{what} file: the key id does not match the name and key")
    return name, private_key


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """An Ed25519 verifier key with its name and key id."""

    name: str
    key_id: int
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``name+keyid+base64``; the key id must match the key."""
        name, public_key = parse_key_text(text, ALG_ED25519, "verifier key")
        return cls(name, key_id(name, ALG_ED25519, public_key), public_key)

    def __str__(self) -> str:
        encoded = base64.b64encode(bytes((ALG_ED25519,)) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    def verify(self, body: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, body)
        except (InvalidSignature, ValueError):
            return False
        return True


def verifier_key_for(name: str, public_key: Ed25519PublicKey) -> VerifierKey:
    """The verifier key users and auditors are given for the signer ``name``."""
    check_key_name(name)
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return VerifierKey(name, key_id(name, ALG_ED25519, raw), raw)


def sign_note(body: bytes, name: str, *private_keys: Ed25519PrivateKey) -> bytes:
    """A signed note: ``body``, a blank line, and one signature line per key, all
    under ``name`` (two keys while a key rotation overlaps)."""
    _check_body(body)
    lines = []
    for private_key in private_keys:
        key = verifier_key_for(name, private_key.public_key())
        signature = key.key_id.to_bytes(4, "big") + private_key.sign(body)
        lines.append(f"{SIG_PREFIX}{name} {base64.b64encode(signature).decode('ascii')}\n")
    return body + b"\n" + "".join(lines).encode("utf-8")


def _check_body(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("note is not UTF-8") from None
    if not text.endswith("\n"):
        raise FormatError("note body must end with a newline")
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in text):
        raise FormatError("note contains a control character")
    return text


def split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A signed note's body and its signature lines as ``(key name, key id ||
    signature)``, in order, checked for form only (C2SP signed-note).

    Raises:
        FormatError: the note is malformed.
    """
    if len(note) > MAX_NOTE_BYTES:
        raise FormatError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    text = _check_body(note)
    split = text.rfind("\n\n")
    if split < 0:
        raise FormatError("note has no blank line before its signatures")
    body, sig_block = text[: split + 1], text[split + 2 :]
    lines = sig_block.split("\n")[:-1]  # sig_block ends with "\n" (checked above)
    if not lines or len(lines) > MAX_SIGNATURES:
        raise FormatError(f"note must carry 1 to {MAX_SIGNATURES} signature lines")
    signatures = []
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise FormatError("signature line must start with an em dash and a space")
        fields = line[len(SIG_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise FormatError("signature line must be '— <name> <base64>'")
        name, encoded = fields
        check_key_name(name)
        raw = b64(encoded, "signature")
        if len(raw) < 5:
            raise FormatError("signature is too short")
        signatures.append((name, raw))
    return body.encode("utf-8"), signatures


def open_note(note: bytes, keys: Sequence[VerifierKey]) -> bytes:
    """Verify ``note`` and return its body.

    Signatures by keys not in ``keys`` are ignored (witnesses' cosignatures
    among them); at least one must be by a given key, and every signature by
    a given key must be valid.

    Raises:
        FormatError: the note is malformed.
        VerificationError: ``unknown-key`` (no signature by a given key) or
            ``signature-invalid``.
    """
    body, signatures = split_note(note)
    by_id = {(k.name, k.key_id): k for k in keys}
    verified = False
    for name, raw in signatures:
        key = by_id.get((name, int.from_bytes(raw[:4], "big")))
        if key is None:
            continue
        if len(raw) != 68 or not key.verify(body, raw[4:]):
            raise VerificationError("signature-invalid", f"bad signature by {name}")
        verified = True
    if not verified:
        raise VerificationError("unknown-key", "the note is not signed by the given key")
    return body


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The signed state of a log: its origin, size and root hash. Protocol
    version 1 defines no extension lines (PROTOCOL §5)."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise FormatError(f"checkpoint origin {self.origin!r} is empty or spans lines")
        if not 0 <= self.size < 2**64:
            raise FormatError(f"checkpoint size {self.size} is not a u64")
        if len(self.root) != 32:
            raise FormatError("checkpoint root must be 32 bytes")

    def to_note_body(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """Parse a checkpoint note body strictly: exactly the three lines
        origin, size, root; ``Checkpoint.parse(b).to_note_body() == b``."""
        text = _check_body(body)
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise FormatError("checkpoint needs origin, size and root lines")
        if len(lines) > 3:
            raise FormatError(
                f"checkpoint has {len(lines) - 3} extension line(s) after the root: "
                "protocol version 1 defines none"
            )
        origin, size, root = lines
        if not origin:
            raise FormatError("checkpoint origin is empty")
        if _SIZE.fullmatch(size) is None or int(size) >= 2**64:
            raise FormatError(f"checkpoint size {size!r} is not a decimal u64")
        raw_root = b64(root, "checkpoint root")
        if len(raw_root) != 32:
            raise FormatError("checkpoint root must be 32 bytes")
        return cls(origin, int(size), raw_root)


def verify_checkpoint(note: bytes, key: VerifierKey, origin: str | None = None) -> Checkpoint:
    """Open a signed checkpoint under ``key`` and parse it (PROTOCOL §5, §7 step 1).

    The checkpoint's origin must be the key's name, and ``origin`` if given.

    Raises:
        VerificationError: ``unknown-key``, ``signature-invalid`` or ``origin-mismatch``.
        FormatError: malformed note or checkpoint.
    """
    checkpoint = Checkpoint.parse(open_note(note, [key]))
    if checkpoint.origin != key.name:
        raise VerificationError(
            "origin-mismatch",
            f"checkpoint is for log {checkpoint.origin!r}, the key is {key.name!r}'s",
        )
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(
            "origin-mismatch", f"checkpoint is for log {checkpoint.origin!r}, not {origin!r}"
        )
    return checkpoint
