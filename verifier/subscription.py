"""What a subscriber of the root stream asks for (docs/PROTOCOL.md §11.2):
every asset, chosen assets, or checkpoints alone; its query parameters, and
reading them by the rules the prover and relays apply.

A malformed query (``parse_subscription`` raises ValueError) is 400
``bad-request`` on the prover and on relays, and a usage error for ``watch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from verifier.errors import FormatError
from verifier.hashing import check_asset_id

__all__ = ["ALL_ASSETS", "MAX_CHOSEN", "Subscription", "parse_chosen", "parse_subscription"]

MAX_CHOSEN = 64  # asset ids one subscription may choose (PROTOCOL §11.2)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a subscriber asked the stream for: every asset (``assets`` None), the
    chosen ``assets``, or ``checkpoints`` alone; frames of another kind are refused."""

    assets: frozenset[str] | None = None
    checkpoints: bool = False

    def query(self) -> str:
        """The ``/roots`` query parameters that ask for it (after ``since``)."""
        if self.checkpoints:
            return "&only=checkpoints"
        if self.assets is not None:
            return "&assets=" + ",".join(sorted(self.assets))
        return ""


ALL_ASSETS = Subscription()


def parse_chosen(text: str) -> frozenset[str]:
    """A comma-separated list of 1 to ``MAX_CHOSEN`` asset ids, none twice.

    Raises:
        ValueError: saying what is wrong.
    """
    ids = text.split(",")
    if not 1 <= len(ids) <= MAX_CHOSEN:
        raise ValueError(f"assets must name 1 to {MAX_CHOSEN} asset ids, not {len(ids)}")
    for asset in ids:
        try:
            check_asset_id(asset)
        except FormatError as exc:
            raise ValueError(f"assets: {exc}") from None
    if len(set(ids)) != len(ids):
        raise ValueError("assets names an asset twice")
    return frozenset(ids)


def parse_subscription(query: str) -> Subscription:
    """What a request's query string subscribes to: ``assets=A,B``,
    ``only=checkpoints``, or (neither) every asset.

    Raises:
        ValueError: malformed, repeated, or both at once.
    """
    params = parse_qs(query, keep_blank_values=True)
    assets, only = params.get("assets"), params.get("only")
    if assets is not None and only is not None:
        raise ValueError("assets and only exclude each other")
    if only is not None:
        if only != ["checkpoints"]:
            raise ValueError("only must be given once, as only=checkpoints")
        return Subscription(checkpoints=True)
    if assets is None:
        return ALL_ASSETS
    if len(assets) != 1:
        raise ValueError("assets must be given once")
    return Subscription(assets=parse_chosen(assets[0]))
