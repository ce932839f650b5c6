"""A user's proof file and the whole chain of checks on it (docs/PROTOCOL.md §6).

The file is JSON (UTF-8)::

    {"format": "solvency-proof/1",
     "user": "<user id>", "salt": "<64 hex>",
     "assets": [{"asset": "BTC", "slot": 5, "balance": "<decimal>",
                 "path": [["<64 hex sibling hash>", "<decimal sibling sum>"], ...]}],
     "record": "<base64 epoch record>",
     "inclusion": ["<64 hex>", ...],
     "checkpoint": "<signed note text>"}

Nothing in it is taken on trust: the record's log index is its epoch number and
the log size is the checkpoint's, so every value feeds one of the checks below.
Parsing is strict (``verifier.fields``: UTF-8 without BOM, no duplicate or
unknown key, canonical base64) but checks syntax only: a balance, slot or
sibling sum out of range parses, and fails its PROTOCOL §3 check by name.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from verifier import rfc9162
from verifier.checkpoint import Checkpoint, VerifierKey, verify_checkpoint
from verifier.cosignature import Cosignature, WitnessKey
from verifier.errors import FormatError, VerificationError
from verifier.fields import b64, decimal, exact_keys, hex32, hex32_list, load_object, natural, text
from verifier.hashing import DIGEST_SIZE, MAX_BALANCE, check_user_id, hasher_for
from verifier.quorum import check_quorum
from verifier.record import AssetState, EpochRecord
from verifier.sumtree import PathStep, verify_path

__all__ = [
    "FORMAT",
    "AssetPath",
    "AssetReport",
    "ProofFile",
    "ProofReport",
    "record_in_log",
    "verify_proof",
]

FORMAT = "solvency-proof/1"
MAX_PROOF_BYTES = 1 << 22  # 4 MiB: far above 500 assets x 32 levels


@dataclass(frozen=True, slots=True)
class AssetPath:
    """The user's leaf in one asset's tree and its inclusion path."""

    asset: str
    slot: int
    balance: int
    path: tuple[PathStep, ...]


@dataclass(frozen=True, slots=True)
class ProofFile:
    """The parsed proof file; ``parse`` and ``to_json`` are exact inverses."""

    user: str
    salt: bytes
    assets: tuple[AssetPath, ...]
    record: bytes
    inclusion: tuple[bytes, ...]
    checkpoint: bytes

    def to_json(self) -> str:
        """Serialize in the canonical form (sorted keys, no spaces)."""
        doc = {
            "format": FORMAT,
            "user": self.user,
            "salt": self.salt.hex(),
            "assets": [
                {
                    "asset": a.asset,
                    "slot": a.slot,
                    "balance": str(a.balance),
                    "path": [[s.hash.hex(), str(s.sum)] for s in a.path],
                }
                for a in self.assets
            ],
            "record": base64.b64encode(self.record).decode("ascii"),
            "inclusion": [h.hex() for h in self.inclusion],
            "checkpoint": self.checkpoint.decode("utf-8"),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, data: bytes | str) -> ProofFile:
        """Parse a proof file strictly.

        Raises:
            FormatError: naming the offending field.
        """
        doc = exact_keys(
            load_object(data, MAX_PROOF_BYTES, "proof file"),
            {"format", "user", "salt", "assets", "record", "inclusion", "checkpoint"},
            "proof file",
        )
        if doc["format"] != FORMAT:
            raise FormatError(f"unsupported proof format {doc['format']!r}, want {FORMAT!r}")
        user = text(doc["user"], "user")
        check_user_id(user)
        assets = doc["assets"]
        if not isinstance(assets, list) or not assets:
            raise FormatError("assets must be a non-empty list (a proof proves a balance)")
        return cls(
            user=user,
            salt=hex32(doc["salt"], "salt"),
            assets=tuple(_asset_path(a, f"assets[{i}]") for i, a in enumerate(assets)),
            record=b64(doc["record"], "record"),
            inclusion=hex32_list(doc["inclusion"], "inclusion"),
            checkpoint=text(doc["checkpoint"], "checkpoint").encode("utf-8"),
        )


@dataclass(frozen=True, slots=True)
class AssetReport:
    """What the user learns about one asset from a verified proof."""

    asset: str
    decimals: int
    balance: int
    liabilities: int
    reserves: int
    status: str


@dataclass(frozen=True, slots=True)
class ProofReport:
    """The outcome of a successful ``verify_proof``; ``cosignatures`` are the
    valid ones by configured witnesses (empty when none is configured)."""

    user: str
    epoch: int
    timestamp_ms: int
    checkpoint: Checkpoint
    assets: tuple[AssetReport, ...]
    record: EpochRecord
    cosignatures: tuple[Cosignature, ...] = ()


def verify_proof(
    proof: ProofFile,
    key: VerifierKey,
    *,
    user: str | None = None,
    origin: str | None = None,
    witnesses: Sequence[WitnessKey] = (),
    quorum: int = 0,
    now: float | None = None,
) -> ProofReport:
    """Run every check on ``proof`` (docs/PROTOCOL.md §7).

    With ``witnesses``, the checkpoint must carry valid cosignatures by
    ``quorum`` of them, dated plausibly for the proof's record against the
    verifier's clock ``now`` (POSIX seconds; None: ``verifier.quorum.clock``).

    Raises:
        VerificationError: naming the first failed check.
        FormatError: if an authenticated part (record, checkpoint) is malformed.
        ValueError: ``quorum`` is not in ``0..len(witnesses)``.
    """
    # 1. The checkpoint is signed by the custodian's key (and names the expected log).
    checkpoint = verify_checkpoint(proof.checkpoint, key, origin)

    # 2. The epoch record is the leaf at index = its epoch number in that log.
    record = record_in_log(proof.record, proof.inclusion, checkpoint)

    # 3. A quorum of the configured witnesses cosigned the checkpoint (PROTOCOL §12.3).
    cosignatures = check_quorum(
        proof.checkpoint, witnesses, quorum, record_ms=record.timestamp_ms, now=now
    )

    # 4. The proof is for the expected user.
    if user is not None and user != proof.user:
        raise VerificationError("user-mismatch", f"proof is for {proof.user!r}, not {user!r}")
    hasher = hasher_for(record.version)  # the hashing rules of the signed record's version
    user_commitment = hasher.commitment(proof.user, proof.salt)

    # 5. Each asset path leads from this user's leaf to that asset's signed root.
    reports = []
    seen: set[str] = set()
    for entry in proof.assets:
        if entry.asset in seen:
            raise VerificationError("duplicate-asset", f"two paths for asset {entry.asset}")
        seen.add(entry.asset)
        state = _asset_state(record, entry.asset)
        # A leaf encodes its amount in 128 bits. An amount above MAX_BALANCE
        # fails leaf-range (or an earlier §3 check) before the leaf is used, so
        # it gets a placeholder rather than a FormatError from encoding.
        if entry.balance <= MAX_BALANCE:
            leaf = hasher.leaf_hash(entry.asset, user_commitment, entry.balance)
        else:
            leaf = bytes(DIGEST_SIZE)
        try:
            verify_path(
                height=state.height,
                root=state.root,
                liabilities=state.liabilities,
                slot=entry.slot,
                leaf=leaf,
                amount=entry.balance,
                path=entry.path,
                hasher=hasher,
            )
        except VerificationError as exc:
            raise VerificationError(exc.check, f"asset {entry.asset}: {exc.detail}") from exc
        reports.append(
            AssetReport(
                asset=entry.asset,
                decimals=state.decimals,
                balance=entry.balance,
                liabilities=state.liabilities,
                reserves=state.reserves,
                status=state.status.name.lower(),
            )
        )
    return ProofReport(
        user=proof.user,
        epoch=record.epoch,
        timestamp_ms=record.timestamp_ms,
        checkpoint=checkpoint,
        assets=tuple(reports),
        record=record,
        cosignatures=cosignatures,
    )


def record_in_log(record: bytes, inclusion: Sequence[bytes], checkpoint: Checkpoint) -> EpochRecord:
    """Decode ``record`` and check it is leaf ``epoch`` of the checkpoint's log.

    Raises:
        VerificationError: ``record-not-in-log`` or an RFC 9162 inclusion check.
        FormatError: the record is malformed.
    """
    decoded = EpochRecord.decode(record)
    if decoded.epoch >= checkpoint.size:
        raise VerificationError(
            "record-not-in-log",
            f"epoch {decoded.epoch} is not in a log of {checkpoint.size} records",
        )
    rfc9162.verify_inclusion(
        rfc9162.leaf_hash(record), decoded.epoch, checkpoint.size, inclusion, checkpoint.root
    )
    return decoded


def _asset_state(record: EpochRecord, asset: str) -> AssetState:
    try:
        return record.asset(asset)
    except KeyError:
        raise VerificationError(
            "asset-not-in-record", f"the epoch record has no asset {asset}"
        ) from None


def _asset_path(doc: Any, where: str) -> AssetPath:
    doc = exact_keys(doc, {"asset", "slot", "balance", "path"}, where)
    steps = doc["path"]
    if not isinstance(steps, list):
        raise FormatError(f"{where}.path must be a list")
    path = []
    for j, step in enumerate(steps):
        if not isinstance(step, list) or len(step) != 2:
            raise FormatError(f"{where}.path[{j}] must be [hash, sum]")
        path.append(
            PathStep(
                hex32(step[0], f"{where}.path[{j}][0]"), decimal(step[1], f"{where}.path[{j}][1]")
            )
        )
    return AssetPath(
        asset=text(doc["asset"], f"{where}.asset"),
        slot=natural(doc["slot"], f"{where}.slot"),
        balance=decimal(doc["balance"], f"{where}.balance"),
        path=tuple(path),
    )
