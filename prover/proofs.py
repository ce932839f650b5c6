"""The proof service: users' bearer tokens, one user's proof for /proof, and
every user's proof exported to files (prover/export.py).

Invariants:

- A proof's trees and record match: both are read under the engine's epoch
  lock. While a failed close's epoch sits in the trees ahead of the last
  record (``Tip.ahead``), the trees are asked for one apply back, and an
  export is refused.
- An export copies the trees once, under the lock, then writes them chunk
  by chunk, each under the lock, so epochs go on meanwhile; it fails if a
  salt rotation replaced the trees in between.
- With witnesses, the default epoch is the latest cosigned by a quorum
  (PROTOCOL §11.3), else the latest.
- Proof files are of format solvency-proof/2: the record's header and, for
  each asset the user holds, its entry and map path (``ProofBasis``); the
  latest record's asset map is built once for all its proofs and exports
  (``MappedRecord``), a stored record's once per proof.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prover import tokens
from prover.config import Config
from prover.dbthread import DbThread
from prover.errors import NotRetained, ProverError
from prover.export import create_export_dir
from prover.mapped import MappedRecord
from prover.rotation import Rotation
from prover.stored import stored_epoch
from prover.witnesses import Witnesses
from storage.store import Store
from verifier.proof import ProofFile
from verifier.stream import EpochMessage

__all__ = ["EXPORT_CHUNK", "Proofs", "Tip"]

EXPORT_CHUNK = 5_000  # users whose proofs are written per pause of the trees


@dataclass(frozen=True, slots=True)
class Tip:
    """The last committed epoch: its number, message and record, and whether
    the trees are one apply ahead of it (cut and applied by a close that failed)."""

    epoch: int
    message: EpochMessage
    record: MappedRecord
    ahead: bool


class Proofs:
    """Proofs served and exported (module docstring). ``tip`` gives the last
    committed epoch (None before the first of this run); read it under ``lock``."""

    def __init__(
        self,
        config: Config,
        store: Store,
        db: DbThread,
        lock: asyncio.Lock,
        rotation: Rotation,
        witnesses: Witnesses | None,
        tip: Callable[[], Tip | None],
    ) -> None:
        self._config, self._store, self._db, self._lock = config, store, db, lock
        self._rotation, self._witnesses, self._tip = rotation, witnesses, tip

    def user_token(self, user: str) -> str:
        """The bearer token the custodian hands ``user`` for /proof."""
        return tokens.user_token(self._config.proof_secret, user)

    def check_user_token(self, user: str, token: str) -> bool:
        return tokens.check_user_token(self._config.proof_secret, user, token)

    def _cosigned(self, epoch: int, message: EpochMessage) -> EpochMessage:
        """``message`` with the cosignatures known of ``epoch`` attached."""
        return message if self._witnesses is None else self._witnesses.attach(epoch, message)

    async def export(
        self, progress: Callable[[int, int], Awaitable[None]]
    ) -> tuple[int, Path, int]:
        """Write every user's proof for the latest epoch into a new directory
        under ``export_dir``. Returns (epoch, directory, files written)."""
        async with self._lock:
            tip = self._tip()
            if tip is None:
                raise ProverError("no epoch has been published yet")
            if tip.ahead:
                raise ProverError(f"epoch {tip.epoch + 1} is failing; export later")
            message, record, epoch, trees = tip.message, tip.record, tip.epoch, self._rotation.trees
            out = create_export_dir(self._config.export_path, epoch)
            users = await trees.snapshot()
        written = 0
        for start in range(0, users, EXPORT_CHUNK):
            async with self._lock:  # the trees may be swapped by a salt rotation
                if trees is not self._rotation.trees:
                    raise ProverError("the salt period changed during the export; run it again")
                cosigned = self._cosigned(epoch, message)  # those come in meanwhile too
                basis = record.basis(cosigned)  # the asset map: built once for all
                written += await trees.export(out, start, EXPORT_CHUNK, basis)
            await progress(min(start + EXPORT_CHUNK, users), users)
        return epoch, out, written

    async def proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof for ``epoch``, by default the latest epoch cosigned
        by ``witness_quorum`` witnesses if there are witnesses (the latest if
        none is, or if its trees are no longer retained), else the latest
        (see ``_proof``)."""
        witnesses = self._witnesses
        cosigned = None if witnesses is None or not witnesses.quorum else witnesses.quorum_epoch
        if epoch is None and cosigned is not None:
            with contextlib.suppress(NotRetained):
                return await self._proof(user, cosigned)
        return await self._proof(user, epoch)

    async def _proof(self, user: str, epoch: int | None = None) -> ProofFile | None:
        """``user``'s proof for the latest epoch, or for ``epoch`` if it is
        one of the last ``proof_epochs`` of this salt period, with the
        cosignatures known; None if they held nothing then.

        Raises:
            NotRetained: ``epoch`` is not (or no longer, or not yet) served;
                also the latest while an epoch waits for a retry and no
                earlier trees are retained (the current ones are ahead of it).
        """
        async with self._lock:  # the trees and the record must match
            tip = self._tip()
            if tip is None:
                return None
            latest, ahead = tip.epoch, int(tip.ahead)
            if epoch is None or epoch == latest:
                epoch, message, record = latest, tip.message, tip.record
                found = await self._rotation.trees.proof(user, ahead)
            elif not 0 <= epoch < latest:
                raise NotRetained(f"epoch {epoch} is not published yet (latest: {latest})")
            else:
                found = await self._rotation.trees.proof(user, latest - epoch + ahead)
                stored = self._db.submit(stored_epoch, self._store, epoch)
                message, record = await asyncio.wrap_future(stored)
        if found is None:
            return None
        return record.basis(self._cosigned(epoch, message)).proof(found)
