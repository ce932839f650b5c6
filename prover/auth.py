"""Bearer tokens in requests (RFC 6750 §2.1, RFC 9110 §11), and auditor tokens.

One function reads ``Authorization`` for every route: more than one such
header is a malformed request (HTTP 400), never a server error; the scheme
is matched case-insensitively; the token follows after one or more spaces.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from websockets.datastructures import Headers

from prover.errors import ConfigError

__all__ = ["BadAuthorization", "auditor_table", "bearer_token", "token_ok"]


class BadAuthorization(ValueError):
    """The request's ``Authorization`` cannot be read (answered 400)."""


def bearer_token(headers: Headers) -> str:
    """The bearer token of a request; "" if none (no header, or another scheme).

    Raises:
        BadAuthorization: more than one ``Authorization`` header.
    """
    values = headers.get_all("Authorization")
    if len(values) > 1:
        raise BadAuthorization("more than one Authorization header")
    if not values:
        return ""
    scheme, _, token = values[0].strip(" \t").partition(" ")
    return token.lstrip(" ") if scheme.lower() == "bearer" else ""


def token_ok(given: str, expected: str) -> bool:
    """``given`` is ``expected`` (constant time); an empty ``expected`` matches nothing."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def auditor_table(spec: str) -> dict[str, str]:
    """``"name:token,name:token"`` (config ``auditor_tokens``) as {token: name}.

    Raises:
        ConfigError: an entry without a name or token, a token shorter than 16
            characters, or a name or token given twice.
    """
    table: dict[str, str] = {}
    names: set[str] = set()
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, token = entry.partition(":")
        if not name or len(token) < 16 or not token.isprintable() or " " in token:
            raise ConfigError(
                f"auditor_tokens: {name or entry[:8]!r}: want name:token, token 16+ printable"
                " characters without spaces"
            )
        if token in table or name in names:
            raise ConfigError(f"auditor_tokens: {name!r} or its token given twice")
        table[token] = name
        names.add(name)
    return table
