"""An engine started on a configuration for the length of a test scenario."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import Config
from prover.engine import Engine
from storage.store import Store

Scenario = Callable[[Engine], Awaitable[None]]


def run_engine(config: Config, key: Ed25519PrivateKey, scenario: Scenario) -> None:
    """Open the store, start an engine, run ``scenario`` with it, then close both."""

    async def main() -> None:
        store = Store.open(config.url)
        engine = Engine(config, store, key)
        await engine.start()
        try:
            await scenario(engine)
        finally:
            await engine.close()
            store.close()

    asyncio.run(main())
