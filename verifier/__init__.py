"""Standalone verifier of the streaming solvency protocol (docs/PROTOCOL.md).

Depends on the standard library, ``cryptography`` (Ed25519) and ``websockets``
(only for the network commands of the CLI); never on prover/ or storage/.
"""
