"""Per-user proof tokens (docs/PROTOCOL.md §11.3): HMAC-SHA256(proof secret, user id).

The custodian hands each user their token; the proof service recomputes it and
compares in constant time, so it stores no per-user secret.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["check_user_token", "user_token"]


def user_token(proof_secret_hex: str, user: str) -> str:
    return hmac.new(
        bytes.fromhex(proof_secret_hex), user.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def check_user_token(proof_secret_hex: str, user: str, token: str) -> bool:
    """True iff ``token`` is ``user``'s; always False when no secret is configured."""
    if not proof_secret_hex:
        return False
    return hmac.compare_digest(user_token(proof_secret_hex, user).encode(), token.encode())
