"""Cross-origin access for pages hosted elsewhere (docs/PROTOCOL.md §11.6). Pure.

A custodian may host the customer page or the dashboard on another origin
than the daemon's; ``cors_origins`` lists those origins. A browser sends
``Origin`` on every cross-origin request and WebSocket handshake: ``/proof``
answers a listed origin with ``Access-Control-Allow-*`` headers (and its
preflight, since the token travels in ``Authorization``), and ``/roots``
refuses a handshake from a page of an origin that is neither the daemon's
own nor listed. Clients that send no ``Origin`` (the CLI, witnesses,
relays) are not browsers and are not concerned.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["allow_headers", "origin_allowed", "preflight_headers"]

MAX_AGE = 600  # seconds a browser may cache a preflight's answer


def origin_allowed(origin: str | None, host: str | None, allowed: Collection[str]) -> bool:
    """Whether a request with this ``Origin`` may be served: none (not a
    browser), the daemon's own (its host and port are the request's ``Host``),
    or a listed one."""
    if origin is None:
        return True
    if origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def allow_headers(origin: str | None, allowed: Collection[str]) -> list[tuple[str, str]]:
    """Headers that let a listed origin's page read a ``/proof`` answer."""
    if origin is None or origin not in allowed:
        return []
    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]


def preflight_headers(origin: str | None, allowed: Collection[str]) -> list[tuple[str, str]]:
    """The answer to a listed origin's preflight of ``GET /proof`` with a token."""
    headers = allow_headers(origin, allowed)
    if headers:
        headers += [
            ("Access-Control-Allow-Methods", "GET"),
            ("Access-Control-Allow-Headers", "Authorization"),
            ("Access-Control-Max-Age", str(MAX_AGE)),
        ]
    return headers
