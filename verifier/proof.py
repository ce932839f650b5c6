"""A user's proof file and the whole chain of checks on it (docs/PROTOCOL.md §6).

The file is JSON (UTF-8)::

    {"format": "solvency-proof/2",
     "user": "<user id>", "salt": "<64 hex>",
     "header": "<base64 record header>",
     "assets": [{"entry": "<base64 asset entry>", "index": 0,
                 "map_path": ["<64 hex>", ...],
                 "slot": 5, "balance": "<decimal>",
                 "path": [["<64 hex sibling hash>", "<decimal sibling sum>"], ...]}],
     "inclusion": ["<64 hex>", ...],
     "checkpoint": "<signed note text>"}

Nothing in it is taken on trust: the header's log index is its epoch number,
the log size is the checkpoint's, and each asset entry is proven against the
header's asset map root, so every value feeds one of the checks below.
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
from verifier.assetmap import verify_map_path
from verifier.checkpoint import Checkpoint, VerifierKey, verify_checkpoint
from verifier.cosignature import Cosignature, WitnessKey
from verifier.errors import FormatError, VerificationError
from verifier.fields import b64, decimal, exact_keys, hex32, hex32_list, load_object, natural, text
from verifier.hashing import DIGEST_SIZE, MAX_BALANCE, check_user_id, hasher_for
from verifier.quorum import check_quorum
from verifier.record import AssetState, RecordHeader, decode_entry
from verifier.selection import PartialRecord
from verifier.sumtree import PathStep, verify_path

__all__ = [
    "FORMAT",
    "AssetPath",
    "AssetReport",
    "ProofFile",
    "ProofReport",
    "header_in_log",
    "verify_proof",
]

FORMAT = "solvency-proof/2"
MAX_PROOF_BYTES = 1 << 22  # 4 MiB: far above 500 assets x 32 levels


@dataclass(frozen=True, slots=True)
class AssetPath:
    """One asset's entry with its map path (``index`` in the asset map), and
    the user's leaf in that asset's tree with its inclusion path."""

    entry: bytes
    index: int
    map_path: tuple[bytes, ...]
    slot: int
    balance: int
    path: tuple[PathStep, ...]


@dataclass(frozen=True, slots=True)
class ProofFile:
    """The parsed proof file; ``parse`` and ``to_json`` are exact inverses."""

    user: str
    salt: bytes
    header: bytes
    assets: tuple[AssetPath, ...]
    inclusion: tuple[bytes, ...]
    checkpoint: bytes

    def to_json(self) -> str:
        """Serialize in the canonical form (sorted keys, no spaces)."""
        doc = {
            "format": FORMAT,
            "user": self.user,
            "salt": self.salt.hex(),
            "header": base64.b64encode(self.header).decode("ascii"),
            "assets": [
                {
                    "entry": base64.b64encode(a.entry).decode("ascii"),
                    "index": a.index,
                    "map_path": [h.hex() for h in a.map_path],
                    "slot": a.slot,
                    "balance": str(a.balance),
                    "path": [[s.hash.hex(), str(s.sum)] for s in a.path],
                }
                for a in self.assets
            ],
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
        doc = load_object(data, MAX_PROOF_BYTES, "proof file")
        # The format first: a file of another format has other keys, and says so.
        if doc.get("format") == "solvency-proof/1":
            raise FormatError(
                "proof format solvency-proof/1 (unreleased, with the whole record) is no "
                f"longer read: ask the prover for a new proof ({FORMAT})"
            )
        if doc.get("format") != FORMAT:
            raise FormatError(f"unsupported proof format {doc.get('format')!r}, want {FORMAT!r}")
        exact_keys(
            doc,
            {"format", "user", "salt", "header", "assets", "inclusion", "checkpoint"},
            "proof file",
        )
        user = text(doc["user"], "user")
        check_user_id(user)
        assets = doc["assets"]
        if not isinstance(assets, list) or not assets:
            raise FormatError("assets must be a non-empty list (a proof proves a balance)")
        return cls(
            user=user,
            salt=hex32(doc["salt"], "salt"),
            header=b64(doc["header"], "header"),
            assets=tuple(_asset_path(a, f"assets[{i}]") for i, a in enumerate(assets)),
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
    record: PartialRecord
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

    # 2. The record's header is the leaf at index = its epoch number in that log.
    header = header_in_log(proof.header, proof.inclusion, checkpoint)

    # 3. A quorum of the configured witnesses cosigned the checkpoint (PROTOCOL §12.3).
    cosignatures = check_quorum(
        proof.checkpoint, witnesses, quorum, record_ms=header.timestamp_ms, now=now
    )

    # 4. The proof is for the expected user.
    if user is not None and user != proof.user:
        raise VerificationError("user-mismatch", f"proof is for {proof.user!r}, not {user!r}")
    hasher = hasher_for(header.version)  # the hashing rules of the signed record's version
    user_commitment = hasher.commitment(proof.user, proof.salt)

    # 5. Each asset's entry is in the record's asset map, and the user's path
    # leads from their leaf to that asset's signed root.
    reports = []
    states: list[AssetState] = []
    for entry in proof.assets:
        verify_map_path(
            hasher,
            entry.entry,
            entry.index,
            entry.map_path,
            header.asset_count,
            header.asset_map_root,
        )
        state = decode_entry(entry.entry, header)
        if any(s.asset == state.asset for s in states):
            raise VerificationError("duplicate-asset", f"two paths for asset {state.asset}")
        states.append(state)
        # A leaf encodes its amount in 128 bits. An amount above MAX_BALANCE
        # fails leaf-range (or an earlier §3 check) before the leaf is used, so
        # it gets a placeholder rather than a FormatError from encoding.
        if entry.balance <= MAX_BALANCE:
            leaf = hasher.leaf_hash(state.asset, user_commitment, entry.balance)
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
            raise VerificationError(exc.check, f"asset {state.asset}: {exc.detail}") from exc
        reports.append(
            AssetReport(
                asset=state.asset,
                decimals=state.decimals,
                balance=entry.balance,
                liabilities=state.liabilities,
                reserves=state.reserves,
                status=state.status.name.lower(),
            )
        )
    return ProofReport(
        user=proof.user,
        epoch=header.epoch,
        timestamp_ms=header.timestamp_ms,
        checkpoint=checkpoint,
        assets=tuple(reports),
        record=PartialRecord(header, tuple(sorted(states, key=lambda s: s.asset))),
        cosignatures=cosignatures,
    )


def header_in_log(
    header: bytes, inclusion: Sequence[bytes], checkpoint: Checkpoint
) -> RecordHeader:
    """Decode a record ``header`` and check it is leaf ``epoch`` of the checkpoint's log.

    Raises:
        VerificationError: ``record-not-in-log`` or an RFC 9162 inclusion check.
        FormatError: the header is malformed.
    """
    decoded = RecordHeader.decode(header)
    if decoded.epoch >= checkpoint.size:
        raise VerificationError(
            "record-not-in-log",
            f"epoch {decoded.epoch} is not in a log of {checkpoint.size} records",
        )
    rfc9162.verify_inclusion(
        rfc9162.leaf_hash(header), decoded.epoch, checkpoint.size, inclusion, checkpoint.root
    )
    return decoded


def _asset_path(doc: Any, where: str) -> AssetPath:
    doc = exact_keys(doc, {"entry", "index", "map_path", "slot", "balance", "path"}, where)
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
        entry=b64(doc["entry"], f"{where}.entry"),
        index=natural(doc["index"], f"{where}.index"),
        map_path=hex32_list(doc["map_path"], f"{where}.map_path"),
        slot=natural(doc["slot"], f"{where}.slot"),
        balance=decimal(doc["balance"], f"{where}.balance"),
        path=tuple(path),
    )
