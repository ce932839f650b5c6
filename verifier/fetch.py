"""``solvency-verify proof --url``: fetch a user's proof from the prover's
``/proof`` (docs/PROTOCOL.md §11.3), and fetch again while its checkpoint
lacks the witnesses' quorum (§12.3).

The prover serves the latest cosigned epoch, but a customer may race the
cosigning of a new one: ``until_witnessed`` retries on ``witness-quorum`` only,
after 0.25 s, then doubling, for at most ``QUORUM_WAIT`` seconds in all.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from verifier.errors import VerificationError
from verifier.inputs import OperationalError, UsageError

__all__ = ["FIRST_RETRY", "QUORUM_WAIT", "fetch_proof", "until_witnessed"]

QUORUM_WAIT = 5.0  # seconds
FIRST_RETRY = 0.25  # seconds, doubling
T = TypeVar("T")


def fetch_proof(url: str, user: str, token: str) -> bytes:
    """The body of ``GET /proof?user=`` on the prover at ``url`` (ws:// is http://).

    Raises:
        UsageError: a URL that is not one, or a 4xx answer.
        OperationalError: the network, or a 5xx answer.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise UsageError(f"--url must be ws://, wss://, http:// or https://, got {url}")
    query = urllib.parse.urlencode({"user": user})
    target = urllib.parse.urlunsplit((scheme, parts.netloc, "/proof", query, ""))
    request = urllib.request.Request(target, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read(1 << 22)
            return body
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace")
        error = UsageError if 400 <= exc.code < 500 else OperationalError
        raise error(f"prover answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OperationalError(f"cannot reach {target}: {exc}") from None


def until_witnessed(
    attempt: Callable[[], T],
    *,
    wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt()``, again while it raises ``witness-quorum`` and ``wait``
    seconds (default ``QUORUM_WAIT``) have not passed since the first; the
    last failure is raised. Every other error is raised at once."""
    wait = QUORUM_WAIT if wait is None else wait
    start, delay = clock(), FIRST_RETRY
    while True:
        try:
            return attempt()
        except VerificationError as exc:
            left = start + wait - clock()
            if exc.check != "witness-quorum" or left <= 0:
                raise
        sleep(min(delay, left))
        delay *= 2
