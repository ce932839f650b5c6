"""Clients of a running daemon: a user's proof from ``/proof``, and the
export of every user's proof over the WebSocket ``/admin/export``.

A refusal the operator must fix (a bad request, a wrong token, an unknown
user) raises ConfigError; a daemon that cannot be reached or fails raises
ProverError.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from prover.config import CONFIG_FILE, Config
from prover.errors import ConfigError, ProverError
from prover.tokens import user_token

__all__ = ["ExportResult", "error_message", "export_proofs", "fetch_proof"]


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where the daemon wrote an export: ``files`` proofs of ``epoch`` in ``dir``."""

    files: int
    epoch: int
    dir: str


def error_message(body: bytes) -> str:
    """The ``message`` of a structured error reply, else the body as text."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()
    return str(doc.get("message", text)) if isinstance(doc, dict) else text.strip()


def fetch_proof(config: Config, user: str, epoch: int | None = None) -> bytes:
    """``user``'s proof file of ``epoch`` (default: the latest), as the daemon sends it."""
    if not config.proof_secret:
        raise ConfigError("proof_secret is not configured")
    token = user_token(config.proof_secret, user)
    query = {"user": user} | ({} if epoch is None else {"epoch": epoch})
    url = f"http://{config.host}:{config.port}/proof?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        message = error_message(exc.read(500))
        if exc.code in (400, 401, 404):  # the request, the token or the user: ours to fix
            raise ConfigError(f"the daemon answered {exc.code}: {message}") from None
        raise ProverError(f"the daemon answered {exc.code}: {message}") from None
    except OSError as exc:
        raise ProverError(f"cannot reach the daemon at {url}: {exc}") from None
    return body


def export_proofs(config: Config) -> ExportResult:
    """Ask the daemon to write every user's proof into a new directory under
    its export_dir, showing its progress on stderr; where it wrote them."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    if not config.admin_token:
        raise ConfigError(
            f"admin_token is not set in {config.data_dir / CONFIG_FILE}: add a random one "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))') "
            "and restart the daemon"
        )
    url = f"ws://{config.host}:{config.port}/admin/export"

    async def run() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {config.admin_token}"}
        async with connect(url, additional_headers=headers, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "export"}))
            bar = tqdm(unit=" users", desc="exporting proofs", file=sys.stderr, disable=None)
            with bar:
                async for frame in ws:
                    reply: dict[str, Any] = json.loads(frame)
                    if reply["type"] != "progress":
                        return reply
                    bar.total = reply["total"]
                    bar.update(reply["done"] - bar.n)
        raise ProverError("the daemon closed the connection during the export")

    try:
        reply = asyncio.run(run())
    except InvalidStatus as exc:
        status = exc.response.status_code
        message = error_message(bytes(exc.response.body or b""))
        if status == 401:
            raise ConfigError(f"the daemon refused admin_token ({message})") from None
        raise ProverError(f"the daemon answered {status}: {message}") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ProverError(f"cannot reach the daemon at {url}: {exc}") from None
    if reply["type"] == "error":
        raise ProverError(f"the export failed: {reply['message']}")
    return ExportResult(reply["files"], reply["epoch"], reply["dir"])
