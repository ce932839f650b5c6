"""``api_read`` (prover/shards/pull.py): a JetStream API read that the
server never answers (one sent during a stream leader change) is sent again
within a fraction of a second instead of waited for the whole timeout.
Real NATS at 127.0.0.1:4222, a responder of the test's own."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from prover.shards.pull import api_read
from tests.prover.test_frontend import NATS


def run(scenario: object) -> None:
    try:
        asyncio.run(scenario)  # type: ignore[arg-type]
    except (OSError, nats.errors.NoServersError) as exc:
        pytest.skip(f"no NATS server at {NATS}: {exc}")


def test_a_request_never_answered_is_sent_again_and_the_next_copy_answers() -> None:
    async def scenario() -> None:
        nc = await nats.connect(NATS)
        subject, seen = f"test.api.{uuid.uuid4().hex}", []

        async def answer(msg: Msg) -> None:
            seen.append(msg.data)
            if len(seen) > 1:  # the first copy is lost, as in a leader change
                await msg.respond(b"state")

        await nc.subscribe(subject, cb=answer)
        began = time.monotonic()
        reply = await api_read(nc, subject, b"ask", timeout=5.0, waits=(0.2,))
        took = time.monotonic() - began
        await nc.close()
        assert reply.data == b"state" and seen == [b"ask", b"ask"]
        assert 0.2 <= took < 1.0  # one wait, not the whole timeout

    run(scenario())


def test_nothing_answering_ends_at_the_deadline_after_several_copies() -> None:
    async def scenario() -> None:
        nc = await nats.connect(NATS)
        subject, seen = f"test.api.{uuid.uuid4().hex}", []

        async def ignore(msg: Msg) -> None:
            seen.append(msg.data)

        await nc.subscribe(subject, cb=ignore)
        began = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await api_read(nc, subject, b"ask", timeout=1.0, waits=(0.2,))
        took = time.monotonic() - began
        await nc.close()
        assert 0.9 <= took < 2.0 and len(seen) >= 4

    run(scenario())


def test_no_responders_is_asked_again_until_one_subscribes() -> None:
    async def scenario() -> None:
        nc = await nats.connect(NATS)
        subject = f"test.api.{uuid.uuid4().hex}"

        async def answer(msg: Msg) -> None:
            await msg.respond(b"late")

        async def subscribe_later() -> None:
            await asyncio.sleep(0.3)
            await nc.subscribe(subject, cb=answer)

        later = asyncio.ensure_future(subscribe_later())
        reply = await api_read(nc, subject, b"ask", timeout=3.0, no_responders_wait=0.05)
        await later
        with pytest.raises(nats.errors.NoRespondersError):
            await api_read(nc, f"{subject}.none", b"ask", timeout=3.0, no_responders_wait=None)
        await nc.close()
        assert reply.data == b"late"

    run(scenario())
