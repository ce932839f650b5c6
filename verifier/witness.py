"""A transparency-log witness, sans I/O (C2SP tlog-witness ``add-checkpoint``;
docs/PROTOCOL.md §12.2).

``Witness.check`` reads a request body and does every check that needs no
state: form, known origin (404), the log's signature (403), old size not above
the checkpoint's (400). ``Witness.decide`` then compares the submission with
the last checkpoint cosigned for that origin (409, 422) and, when every check
passes, cosigns and returns the new ``LogState``. The caller holds the origin's
lock across ``decide`` and the durable write of that state, and answers 200
only once the state is on disk: then no two cosigned checkpoints of a log are
inconsistent, whatever instant the witness is killed at.

Invariant (what ``decide`` guarantees): a ``Cosigned`` decision's state
extends the given state (same size and root, or a verified RFC 9162 §2.1.4
consistency proof from it), and its timestamp is no earlier than the given
state's, so that the cosignature/v1 statement "at time T this is the largest
tree I saw" never contradicts an earlier one after a clock step back.

No clock, no files, no sockets: the time is an argument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import rfc9162
from verifier.checkpoint import (
    SIG_PREFIX,
    Checkpoint,
    VerifierKey,
    check_key_name,
    open_note,
    split_note,
)
from verifier.checkpoint import format_signer_key as _format_signer_key
from verifier.checkpoint import parse_signer_key as _parse_signer_key
from verifier.cosignature import (
    ALG_COSIGNATURE_V1,
    MAX_TIMESTAMP,
    WitnessKey,
    cosign,
    witness_key_for,
)
from verifier.errors import FormatError, VerificationError
from verifier.fields import b64

__all__ = [
    "MAX_BODY",
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "Cosigned",
    "LogState",
    "Refusal",
    "Request",
    "Submission",
    "Witness",
    "format_signer_key",
    "parse_checkpoint_body",
    "parse_request",
    "parse_signer_key",
]

MAX_BODY = 1 << 16  # a request body above this is refused with 413
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
STATE_HEADER = b"witness-state/v1\n"
_OLD = re.compile(rb"old (0|[1-9][0-9]{0,19})")


@dataclass(frozen=True, slots=True)
class Request:
    """An ``add-checkpoint`` request body, parsed for form only."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes


def parse_request(body: bytes) -> Request:
    """Parse ``old <size>\\n``, 0 to 63 lines of canonical base64 of 32 bytes, an
    empty line, then the signed note (whose form ``split_note`` checks later).

    Raises:
        FormatError: the body does not have this form.
    """
    if len(body) > MAX_BODY:
        raise FormatError(f"request body is larger than {MAX_BODY} bytes")
    first, sep, rest = body.partition(b"\n")
    match = _OLD.fullmatch(first)
    if not sep or match is None or int(match[1]) >= 2**64:
        raise FormatError("first line must be 'old <size>': a decimal u64, no leading zeros")
    proof: list[bytes] = []
    while True:
        line, sep, rest = rest.partition(b"\n")
        if not sep:
            raise FormatError("no empty line between the proof and the checkpoint")
        if not line:
            break
        if len(proof) == MAX_PROOF_LINES:
            raise FormatError(f"more than {MAX_PROOF_LINES} consistency proof lines")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"proof line {len(proof) + 1} is not base64") from None
        hash_ = b64(text, f"proof line {len(proof) + 1}")
        if len(hash_) != 32:
            raise FormatError(f"proof line {len(proof) + 1} is not a 32-byte hash")
        proof.append(hash_)
    return Request(int(match[1]), tuple(proof), rest)


def parse_checkpoint_body(body: bytes) -> Checkpoint:
    """The origin, size and root of a C2SP checkpoint body (already checked as
    a note body: UTF-8, no control character, ends in LF). Extension lines are
    allowed, as C2SP tlog-checkpoint allows them, if non-empty; a cosignature
    covers them, but the witness makes no statement about them."""
    lines = body.decode("utf-8")[:-1].split("\n")
    if len(lines) < 3:
        raise FormatError("checkpoint needs origin, size and root lines")
    if not all(lines[3:]):
        raise FormatError("checkpoint extension lines must be non-empty")
    return Checkpoint.parse("\n".join([*lines[:3], ""]).encode("utf-8"))


@dataclass(frozen=True, slots=True)
class LogState:
    """The last checkpoint a witness cosigned for a log: what it persists.

    ``note`` is the signed checkpoint as submitted (evidence, and what monitors
    may fetch); ``cosignature`` the line the witness answered, dated
    ``timestamp``. ``size`` and ``root`` are those of ``note``'s body.
    """

    origin: str
    size: int
    root: bytes
    timestamp: int
    note: bytes
    cosignature: bytes

    def encode(self) -> bytes:
        """``witness-state/v1``, the cosignature line, then the note."""
        return STATE_HEADER + self.cosignature + self.note

    @classmethod
    def decode(cls, data: bytes) -> LogState:
        """Inverse of ``encode``; checks the form, not the signatures.

        Raises:
            FormatError: not a state of this form.
        """
        if not data.startswith(STATE_HEADER):
            raise FormatError("not a witness state: no 'witness-state/v1' first line")
        line, sep, note = data[len(STATE_HEADER) :].partition(b"\n")
        if not sep:
            raise FormatError("witness state has no cosignature line")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("witness state's cosignature line is not UTF-8") from None
        fields = text.removeprefix(SIG_PREFIX).split(" ")
        if not text.startswith(SIG_PREFIX) or len(fields) != 2:
            raise FormatError("witness state's cosignature line must be '— <name> <base64>'")
        check_key_name(fields[0])
        raw = b64(fields[1], "witness state's cosignature")
        if len(raw) != 76:
            raise FormatError("witness state's cosignature is not 76 bytes")
        checkpoint = parse_checkpoint_body(split_note(note)[0])
        timestamp = int.from_bytes(raw[4:12], "big")
        return cls(
            checkpoint.origin, checkpoint.size, checkpoint.root, timestamp, note, line + b"\n"
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer other than 200. ``reason`` names the refusal class (for
    logs); ``evidence`` is a signed note proving the log forked, if any."""

    status: int
    reason: str
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    evidence: bytes | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    """A request that passed every check that does not depend on the state."""

    request: Request
    checkpoint: Checkpoint
    body: bytes  # the checkpoint's note body: what the cosignature signs


@dataclass(frozen=True, slots=True)
class Cosigned:
    """Persist ``state`` durably, then answer 200 with ``body``."""

    state: LogState
    body: bytes


def _refuse(status: int, reason: str, message: str, evidence: bytes | None = None) -> Refusal:
    return Refusal(status, reason, message.encode("utf-8") + b"\n", evidence=evidence)


class Witness:
    """The witness ``name`` with ``private_key``, for the logs of ``log_keys``
    (a log's origin is its key's name; several keys per origin while a log
    rotates its key)."""

    def __init__(
        self, name: str, private_key: Ed25519PrivateKey, log_keys: Iterable[VerifierKey]
    ) -> None:
        self.key: WitnessKey = witness_key_for(name, private_key.public_key())
        self._private_key = private_key
        self.logs: dict[str, tuple[VerifierKey, ...]] = {}
        for key in log_keys:
            self.logs[key.name] = (*self.logs.get(key.name, ()), key)

    @property
    def name(self) -> str:
        return self.key.name

    def check(self, body: bytes) -> Submission | Refusal:
        """The checks that need no state, in the order of C2SP tlog-witness."""
        if len(body) > MAX_BODY:
            return _refuse(413, "too-large", f"request body is larger than {MAX_BODY} bytes")
        try:
            request = parse_request(body)
            note_body, _ = split_note(request.note)
            checkpoint = parse_checkpoint_body(note_body)
        except FormatError as exc:
            return _refuse(400, "malformed", f"malformed request: {exc}")
        keys = self.logs.get(checkpoint.origin)
        if keys is None:
            return _refuse(404, "unknown-origin", f"unknown log origin {checkpoint.origin!r}")
        try:
            open_note(request.note, keys)
        except VerificationError as exc:
            return _refuse(403, "untrusted-signature", f"{exc.check}: {exc.detail}")
        if request.old_size > checkpoint.size:
            return _refuse(
                400,
                "old-size-too-large",
                f"old size {request.old_size} is larger than the checkpoint's {checkpoint.size}",
            )
        return Submission(request, checkpoint, note_body)

    def decide(
        self, submission: Submission, state: LogState | None, now: int
    ) -> Cosigned | Refusal:
        """Compare ``submission`` with ``state``, the last checkpoint cosigned for
        its origin (None: never), at POSIX time ``now``; cosign if consistent."""
        request, new = submission.request, submission.checkpoint
        if state is not None and state.origin != new.origin:
            raise ValueError(f"state of {state.origin!r} given for {new.origin!r}")
        size, root = (state.size, state.root) if state else (0, rfc9162.EMPTY_ROOT)
        if request.old_size != size:
            return Refusal(409, "stale-old-size", b"%d\n" % size, SIZE_CONTENT_TYPE)
        if new.size == size and new.root != root:
            evidence = request.note if state is not None else None
            message = f"checkpoint of size {size} has a root other than the one cosigned"
            return _refuse(409, "root-conflict", message, evidence)
        try:
            rfc9162.verify_consistency(size, new.size, root, new.root, request.proof)
        except VerificationError as exc:
            return _refuse(422, "bad-proof", f"{exc.check}: {exc.detail}")
        timestamp = max(now, state.timestamp if state else 0)
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise ValueError(f"time {timestamp} is not in 0..2**63-1")
        line = cosign(submission.body, self.name, self._private_key, timestamp)
        cosigned = LogState(new.origin, new.size, new.root, timestamp, request.note, line)
        return Cosigned(cosigned, line)


# The witness's key file: Go's note signer key text, with the cosignature/v1
# algorithm byte: PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x04 || seed[32])>.


def format_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """The key file's text (one line, no newline) for the witness ``name``."""
    return _format_signer_key(name, ALG_COSIGNATURE_V1, private_key)


def parse_signer_key(text: str) -> tuple[str, Ed25519PrivateKey]:
    """The witness's name and private key from a key file's text.

    Raises:
        FormatError: not ``PRIVATE+KEY+name+keyid+base64``, not a 0x04 key, or
            a key id that does not match the name and key.
    """
    return _parse_signer_key(text, ALG_COSIGNATURE_V1, "witness key")
