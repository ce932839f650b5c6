"""The engine with its trees on two workers: BTC on one, ETH on the other;
proofs, exports and a salt rotation hold every asset of a user."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prover.engine import Engine
from prover.pool import TreePool
from storage.store import Store
from tests.prover.test_engine import KEY, Clock, balances, config, ingest
from verifier.proof import ProofFile, verify_proof


def test_two_tree_workers_serve_proofs_exports_and_a_salt_rotation(tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock()
        cfg = config(tmp_path, salt_period=1.0, tree_workers=2)
        store = Store.open(cfg.url)
        engine = Engine(cfg, store, KEY, clock=clock)
        await engine.start()
        try:
            trees = engine._rotation.trees
            assert isinstance(trees, TreePool) and trees.owner("ETH") == 1  # BTC: 0
            rows = (1, "alice", "BTC", 150), (2, "bob", "BTC", 50), (3, "alice", "ETH", 7)
            await ingest(engine, balances("core", *rows))
            await engine.close_epoch()
            first = await engine.proof("alice")
            assert first is not None
            report = verify_proof(
                ProofFile.parse(first.to_json()), engine.verifier_key, user="alice"
            )
            assert {a.asset: a.balance for a in report.assets} == {"BTC": 150, "ETH": 7}

            async def progress(done: int, total: int) -> None:
                pass

            epoch, out, written = await engine.export_proofs(progress)
            assert epoch == 0 and written == 2
            for user, held in [("alice", {"BTC": 150, "ETH": 7}), ("bob", {"BTC": 50})]:
                proof = ProofFile.parse((out / f"{user}.json").read_text())
                report = verify_proof(proof, engine.verifier_key, user=user)
                assert {a.asset: a.balance for a in report.assets} == held

            clock.now += 2  # the period is over: the next epoch starts building the new one
            await ingest(engine, balances("core", (4, "alice", "ETH", 8)))
            await engine.close_epoch()
            seq = 5
            while engine._rotation.loading:
                await ingest(engine, balances("core", (seq, "carol", "BTC", seq)))
                seq += 1
                clock.now += 0.001  # the new period must not be over once built, however slowly
                await engine.close_epoch()
                await asyncio.sleep(0.05)
            assert engine._rotation.trees is not trees
            after = await engine.proof("alice")
            assert after is not None and after.salt != first.salt
            report = verify_proof(
                ProofFile.parse(after.to_json()), engine.verifier_key, user="alice"
            )
            assert {a.asset: a.balance for a in report.assets} == {"BTC": 150, "ETH": 8}
        finally:
            await engine.close()
            store.close()

    asyncio.run(main())
