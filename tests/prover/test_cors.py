"""Cross-origin access (prover/cors.py) over real sockets: a listed origin's
page may read /proof (after its preflight) and subscribe to /roots; another
origin's page may do neither; clients without ``Origin`` are not concerned."""

from __future__ import annotations

import asyncio
import http.client
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from prover.cors import origin_allowed
from prover.engine import Engine
from tests.prover.test_server import serve

LISTED = "https://pages.example"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def call(host: str, method: str, path: str, headers: dict[str, str]) -> Answer:
    """One HTTP request in a thread (the server runs on this event loop)."""

    def blocking() -> Answer:
        name, port = host.split(":")
        conn = http.client.HTTPConnection(name, int(port), timeout=10)
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())

    return await asyncio.to_thread(blocking)


def test_proof_and_roots_across_origins(tmp_path: Path) -> None:
    async def scenario(engine: Engine, host: str) -> None:
        # the preflight of GET /proof with a token: a listed origin only
        asked = {"Origin": LISTED, "Access-Control-Request-Headers": "authorization"}
        answer = await call(host, "OPTIONS", "/proof?user=alice", asked)
        assert answer.status == 204
        assert answer.headers.get("Access-Control-Allow-Origin") == LISTED
        assert answer.headers.get("Access-Control-Allow-Headers") == "Authorization"
        stranger = await call(host, "OPTIONS", "/proof", {"Origin": "https://evil.example"})
        assert stranger.status == 403
        assert json.loads(stranger.body)["code"] == "forbidden-origin"
        assert (await call(host, "OPTIONS", "/roots", {"Origin": LISTED})).status == 405

        # the answer itself (an error here: no balances) is readable by the listed page only
        listed = await call(host, "GET", "/proof?user=alice", {"Origin": LISTED})
        assert listed.status == 401 and listed.headers.get("Access-Control-Allow-Origin") == LISTED
        other = await call(host, "GET", "/proof?user=alice", {"Origin": "https://evil.example"})
        assert other.headers.get("Access-Control-Allow-Origin") is None

        # /roots: no Origin (a CLI), the listed one, and the prover's own pages
        for origin in (None, Origin(LISTED), Origin(f"http://{host}")):
            async with connect(f"ws://{host}/roots", origin=origin):
                pass
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://{host}/roots", origin=Origin("https://evil.example")):
                pass
        assert refused.value.response.status_code == 403

    serve(tmp_path, scenario, cors_origins=(LISTED,))


def test_origin_rules() -> None:
    assert origin_allowed(None, "prover:8765", ())
    assert origin_allowed("http://prover:8765", "prover:8765", ())
    assert origin_allowed("http://PROVER:8765", "prover:8765", ())
    assert not origin_allowed("http://prover:8766", "prover:8765", ())
    assert not origin_allowed("null", "prover:8765", ())  # a sandboxed or file: page
    assert origin_allowed("https://pages.example", None, ("https://pages.example",))
