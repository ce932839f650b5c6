"""How the command lines show results to people: amounts in the asset's
decimals (exact, never floats), times in UTC, who cosigned, a proof's summary
for ``--json``."""

from __future__ import annotations

import time
from typing import Any

from verifier.cosignature import Cosignature
from verifier.hashing import printable_id
from verifier.proof import ProofReport

__all__ = ["cosigned_line", "cosigners", "format_amount", "proof_summary", "when"]


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
