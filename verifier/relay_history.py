"""A relay's bounded history of verified frames, and what it answers a
subscriber asking for ``/roots?since=N[&assets=A,B|&only=checkpoints]``
(docs/PROTOCOL.md §11.2, §11.7), pure.

Invariants:

- ``History`` holds the frames of epochs ``first .. next - 1``, consecutive,
  at most ``capacity`` of them; ``next`` is the size of the last checkpoint
  the relay verified (the next epoch it will serve), and only grows.
- ``admit`` answers a subscription exactly as the prover does (§11.2) for
  what the relay verified: ``since`` absent is live, from ``next``;
  and the relay's own cases: ``since`` above ``next`` is 503 ``not-yet`` (a
  relay that has not verified that far is behind, which is no evidence
  against the log, unlike the prover's 400 ``bad-since``), and ``since``
  below ``first`` is 404 ``not-retained`` naming ``first``.
- The subscription is read by the prover's rules
  (``verifier.subscription.parse_subscription``); a malformed one is 400
  ``bad-request``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qs

from verifier.subscription import ALL_ASSETS, Subscription, parse_subscription

__all__ = [
    "Admission",
    "History",
    "Refusal",
    "Relayed",
    "admit",
    "parse_since",
]


@dataclass(frozen=True, slots=True)
class Relayed:
    """A frame of ``epoch``: its payload, whether it goes as a text frame
    (else binary), and whether the payload is MessagePack (``msgpack``, the
    ``solvency-msgpack`` subprotocol's encoding) or JSON.

    A frame verified upstream is kept as received, forwarded byte for byte,
    with what the relay's auditor holds of it: ``reports``, the signed
    reports its record binds (record order, none twice), and ``fresh``, the
    attested (asset, source) pairs whose report its record binds anew, not
    bound so by the epoch before (None: that epoch is unknown, all are)."""

    epoch: int
    payload: bytes
    text: bool = True
    msgpack: bool = False
    reports: tuple[bytes, ...] = ()
    fresh: frozenset[tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer refusing a subscription: ``{"type": "error", "code":
    ..., "message": ...}`` (and ``oldest`` for ``not-retained``)."""

    status: int
    code: str
    message: str
    oldest: int | None = None

    def body(self) -> bytes:
        doc: dict[str, object] = {"type": "error", "code": self.code, "message": self.message}
        if self.oldest is not None:
            doc["oldest"] = self.oldest
        return json.dumps(doc).encode()


class History:
    """The last ``capacity`` verified frames, by epoch (module docstring)."""

    def __init__(self, capacity: int, next_epoch: int) -> None:
        """``next_epoch``: the size the relay's auditor state has verified."""
        if capacity < 1:
            raise ValueError(f"a history of {capacity} frames")
        self.capacity = capacity
        self.next = next_epoch
        self._frames: deque[Relayed] = deque(maxlen=capacity)

    @property
    def first(self) -> int:
        """The oldest epoch retained (``next`` while none is)."""
        return self._frames[0].epoch if self._frames else self.next

    def __len__(self) -> int:
        return len(self._frames)

    def append(self, frame: Relayed) -> None:
        """Keep ``frame``, the next epoch; the oldest goes past ``capacity``.

        Raises:
            ValueError: ``frame`` is not of epoch ``next``.
        """
        if frame.epoch != self.next:
            raise ValueError(f"epoch {frame.epoch} relayed after {self.next - 1}")
        self._frames.append(frame)
        self.next += 1

    def get(self, epoch: int) -> Relayed | None:
        """The frame of ``epoch`` if it is retained, else None."""
        index = epoch - self.first
        return self._frames[index] if 0 <= index < len(self._frames) else None


def parse_since(query: str) -> int | None:
    """``since`` in a request's query string, or None without one.

    Raises:
        ValueError: it is not one epoch number.
    """
    values = parse_qs(query).get("since")
    if not values:
        return None
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 19:
        raise ValueError("since must be one epoch number")
    return int(values[0])


@dataclass(frozen=True, slots=True)
class Admission:
    """A subscription admitted: the first epoch to send, and what to send of each."""

    since: int
    subscription: Subscription = ALL_ASSETS


def admit(
    history: History, query: str, subscribers: int, max_subscribers: int
) -> Admission | Refusal:
    """What to send a new subscriber asking ``/roots?<query>`` and from which
    epoch, or why it is refused; ``subscribers``: how many the relay serves now."""
    try:
        since = parse_since(query)
        subscription = parse_subscription(query)
    except ValueError as exc:
        return Refusal(400, "bad-request", str(exc))
    if since is not None and since > history.next:
        return Refusal(
            503,
            "not-yet",
            f"since={since} is beyond the log this relay verified ({history.next})",
        )
    if since is not None and since < history.first:
        return Refusal(
            404,
            "not-retained",
            f"since={since} is older than this relay's history: the oldest epoch it "
            f"serves is {history.first}",
            oldest=history.first,
        )
    if subscribers >= max_subscribers:
        return Refusal(503, "busy", "too many subscribers")
    return Admission(history.next if since is None else since, subscription)
