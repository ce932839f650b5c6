"""The prover's side of C2SP tlog-witness ``add-checkpoint``, sans I/O
(docs/PROTOCOL.md §12.4): the witness endpoints it is configured with, the
request body, the reading of an answer, and what the prover knows of each
witness (``WitnessState``).

Invariants:

- an answer counts as cosigned only if it carries a valid cosignature/v1 line
  by the configured witness key over exactly the submitted checkpoint body;
  lines by other keys are dropped (C2SP: the client ignores unknown keys);
- the state's ``size`` only moves to a size a witness stated: a 200 (the
  submitted size) or a 409 (its body); a 409 that repeats the old size just
  sent, or names a size beyond the checkpoint's, makes no progress and is a
  failure (``conflict``: the witness holds another checkpoint of that size,
  or one of a log longer than ours: a fork, or a lost database);
- a 409 is followed at once by a resubmission from the learned size, at most
  ``MAX_CONFLICTS`` times in a row; every failure backs off (``RETRY``).
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from prover.backoff import Backoff
from verifier.checkpoint import SIG_PREFIX, split_note
from verifier.cosignature import WitnessKey, verify_cosignatures
from verifier.errors import FormatError, VerificationError

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_CONFLICTS",
    "RETRY",
    "SIZE_CONTENT_TYPE",
    "Conflict",
    "Cosigned",
    "Failed",
    "Outcome",
    "WitnessEndpoint",
    "WitnessState",
    "read_answer",
    "request_body",
]

SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_ANSWER_BYTES = 1 << 16
MAX_PROOF_LINES = 63  # C2SP tlog-witness: a client never sends more
MAX_CONFLICTS = 3  # 409s in a row for one checkpoint before it counts as a failure
RETRY = Backoff(first=0.5, cap=30.0)  # seconds between attempts at a failing witness
_SIZE = re.compile(r"(0|[1-9][0-9]{0,19})\n")


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """A configured witness: its cosigning key and its submission prefix
    (``http[s]://host[:port][/path]``, without a trailing slash)."""

    key: WitnessKey
    url: str

    @classmethod
    def parse(cls, key: str, url: str) -> WitnessEndpoint:
        """Raises FormatError naming what is wrong with ``key`` or ``url``."""
        parsed = WitnessKey.parse(key)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FormatError(f"witness URL {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FormatError(f"witness URL {url!r}: want http://host[:port][/prefix]")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise FormatError(f"witness URL {url!r}: no query, fragment or user info")
        del port
        return cls(parsed, url.rstrip("/"))

    @property
    def name(self) -> str:
        """How logs and metrics name the witness: its key name and key id."""
        return f"{self.key.name}+{self.key.key_id:08x}"


def request_body(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """An ``add-checkpoint`` body: ``old <size>``, the consistency proof from
    that size, one line per hash (none from 0), a blank line, the signed note."""
    if old_size < 0 or (old_size == 0 and proof) or len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"no consistency proof of {len(proof)} hashes from size {old_size}")
    lines = [b"old %d\n" % old_size] + [base64.b64encode(h) + b"\n" for h in proof]
    return b"".join(lines) + b"\n" + note


@dataclass(frozen=True, slots=True)
class Cosigned:
    """200: the witness's valid cosignature line(s), UTF-8, newline-terminated."""

    lines: bytes


@dataclass(frozen=True, slots=True)
class Conflict:
    """409 with the witness's last cosigned size."""

    size: int


@dataclass(frozen=True, slots=True)
class Failed:
    """Anything else: ``reason`` is one line for the operator's log."""

    reason: str


Outcome = Cosigned | Conflict | Failed


def read_answer(
    key: WitnessKey, note_body: bytes, status: int, content_type: str, body: bytes
) -> Outcome:
    """What the witness ``key`` answered to a submission of the checkpoint
    whose note body is ``note_body``."""
    if status == 200:
        return _cosigned(key, note_body, body)
    text = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    if status == 409 and content_type.split(";")[0].strip().lower() == SIZE_CONTENT_TYPE:
        match = _SIZE.fullmatch(body.decode("ascii", "replace"))
        if match is None:
            return Failed(f"409 with a malformed size {text!r}")
        return Conflict(int(match.group(1)))
    meaning = {
        400: "it finds the request malformed",
        403: "it does not trust the log's signature",
        404: "it does not know the log's origin",
        409: "it holds another checkpoint of that size",
        422: "it refuses the consistency proof",
    }.get(status, "unexpected answer")
    return Failed(f"{status}: {meaning}: {text}" if text else f"{status}: {meaning}")


def _cosigned(key: WitnessKey, note_body: bytes, body: bytes) -> Outcome:
    try:
        _, signatures = split_note(note_body + b"\n" + body)
    except FormatError as exc:
        return Failed(f"200 without valid signature lines: {exc}")
    mine = [
        f"{SIG_PREFIX}{name} {base64.b64encode(raw).decode()}\n".encode()
        for name, raw in signatures
        if name == key.name and raw[:4] == key.key_id.to_bytes(4, "big")
    ][:1]
    if not mine:
        return Failed(f"200 without a cosignature by {key.name}")
    try:
        verify_cosignatures(note_body + b"\n" + mine[0], [key], 1)
    except (FormatError, VerificationError) as exc:
        return Failed(f"200 with an invalid cosignature: {exc}")
    return Cosigned(mine[0])


@dataclass(frozen=True, slots=True)
class WitnessState:
    """What the prover knows of one witness: the size of the last checkpoint
    it cosigned (None: unknown, asked with ``old 0``), failures in a row and
    409s in a row for the checkpoint being submitted."""

    size: int | None = None
    failures: int = 0
    conflicts: int = 0

    def old_size(self, new_size: int) -> int:
        """The old size to send with a checkpoint of ``new_size``."""
        return self.size if self.size is not None and self.size <= new_size else 0

    def wants(self, new_size: int) -> bool:
        """Whether to submit a checkpoint of ``new_size``: news to the witness,
        or of the very size a 409 just told (the witness then compares the
        roots, and cosigns ours again if they are the same)."""
        if self.size is None or new_size > self.size:
            return True
        return new_size == self.size and self.conflicts > 0

    def after(self, outcome: Outcome, sent_old: int, new_size: int) -> tuple[WitnessState, str]:
        """The state after ``outcome`` of a submission of ``new_size`` from
        ``sent_old``, and why it failed ("" if it did not: then, if the
        state still ``wants(new_size)``, resubmit at once; if it failed,
        wait ``retry_delay()``)."""
        if isinstance(outcome, Cosigned):
            return WitnessState(new_size), ""
        if isinstance(outcome, Conflict):
            if outcome.size == sent_old or outcome.size > new_size:
                return self._failed(), (
                    f"409: it cosigned a checkpoint of size {outcome.size} that ours"
                    f" of size {new_size} does not extend (a fork, or a lost database?)"
                )
            if self.conflicts + 1 >= MAX_CONFLICTS:
                return self._failed(), f"409 {MAX_CONFLICTS} times in a row"
            return WitnessState(outcome.size, self.failures, self.conflicts + 1), ""
        return self._failed(), outcome.reason

    def _failed(self) -> WitnessState:
        return WitnessState(self.size, self.failures + 1, 0)

    def retry_delay(self) -> float:
        """Seconds to wait before the next attempt after a failure."""
        return RETRY.delay(self.failures)
