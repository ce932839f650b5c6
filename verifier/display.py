"""How the command lines show results to people: amounts in the asset's
decimals (exact, never floats), times in UTC, who cosigned, a proof's summary
for ``--json``, and watch's report of each verified epoch, which says what
was not verified: the assets not followed, or the records."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from verifier.cosignature import Cosignature
from verifier.hashing import printable_id
from verifier.proof import ProofReport
from verifier.selection import PartialRecord

if TYPE_CHECKING:  # proof need not import the auditor
    from verifier.auditor import Verified

__all__ = [
    "cosigned_line",
    "cosigners",
    "epoch_event",
    "format_amount",
    "proof_summary",
    "when",
]


def format_amount(value: int, decimals: int) -> str:
    """``value`` smallest units as a decimal number, exactly (no floats)."""
    if decimals == 0:
        return str(value)
    whole, frac = divmod(value, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}".rstrip("0").rstrip(".")


def when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def cosigners(cosignatures: tuple[Cosignature, ...]) -> list[dict[str, str]]:
    """For --json: who cosigned, and when."""
    return [{"name": c.witness.name, "time": when(c.timestamp * 1000)} for c in cosignatures]


def cosigned_line(cosignatures: tuple[Cosignature, ...], quorum: int) -> str:
    names = ", ".join(printable_id(c.witness.name) for c in cosignatures)
    return f"  cosigned by {names} (a quorum of {quorum} required)"


def proof_summary(report: ProofReport, code: int) -> dict[str, Any]:
    return {
        "valid": True,
        "exit": code,
        "user": report.user,
        "epoch": report.epoch,
        "time": when(report.timestamp_ms),
        "log_size": report.checkpoint.size,
        "cosigned_by": cosigners(report.cosignatures),
        "solvent": report.record.solvent,
        "assets": [
            {
                "asset": a.asset,
                "balance": format_amount(a.balance, a.decimals),
                "liabilities": format_amount(a.liabilities, a.decimals),
                "reserves": format_amount(a.reserves, a.decimals),
                "status": a.status,
            }
            for a in report.assets
        ],
    }


def epoch_event(verified: Verified) -> tuple[dict[str, Any], str]:
    """watch's report of a verified epoch: the ``--json`` event and the line.

    ``followed`` names what was verified: ``"all"`` assets, the chosen ones
    (a list: those the record has are in ``assets``, those it lacks in
    ``absent``; the ``other_assets`` are neither sent nor verified), or
    ``"checkpoints"`` (event ``checkpoint``: the log's size and root, no record).
    """
    audit = verified.audit
    record = audit.record
    signed = (" | cosigned by " if audit.cosignatures else "") + ", ".join(
        printable_id(c.witness.name) for c in audit.cosignatures
    )
    if record is None:
        size, root = audit.state.size, audit.state.root.hex()
        doc: dict[str, Any] = {
            "event": "checkpoint",
            "epoch": audit.epoch,
            "size": size,
            "root": root,
            "cosigned_by": cosigners(audit.cosignatures),
            "followed": "checkpoints",
        }
        line = (
            f"epoch {audit.epoch} checkpoint verified: log of {size} records, root {root}"
            " | records not followed (not verified)"
        )
        return doc, line + signed
    parts = [
        f"{printable_id(a.asset)} {verified.status(a.asset)} liabilities "
        f"{format_amount(a.liabilities, a.decimals)} reserves "
        f"{format_amount(a.reserves, a.decimals)}"
        for a in record.assets
    ]
    doc = {
        "event": "epoch",
        "epoch": record.epoch,
        "time": when(record.timestamp_ms),
        "solvent": record.solvent,
        "cosigned_by": cosigners(audit.cosignatures),
        "assets": {
            a.asset: {
                "status": verified.status(a.asset),
                "liabilities": str(a.liabilities),
                "reserves": str(a.reserves),
            }
            for a in record.assets
        },
        "followed": "all",
        "other_assets": 0,
    }
    if isinstance(record, PartialRecord):
        others = record.header.asset_count - len(record.assets)
        doc["solvent"] = record.solvent and not record.absent
        doc["followed"] = sorted([a.asset for a in record.assets] + list(record.absent))
        doc["absent"] = list(record.absent)
        doc["other_assets"] = others
        parts += [
            f"{printable_id(a)} absent: the record has no entry for it" for a in record.absent
        ]
        parts.append(
            f"{others} other asset{'' if others == 1 else 's'} not followed (not verified)"
        )
    line = f"epoch {record.epoch} {when(record.timestamp_ms)} verified: " + (
        " | ".join(parts) or "no assets"
    )
    return doc, line + signed
