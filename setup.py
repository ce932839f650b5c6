"""The prover's C extensions, both optional: without a C compiler (or
OpenSSL's headers) the install goes on, and the prover does the same work in
Python, byte for byte the same, more slowly. Everything else is in
pyproject.toml.

- prover._sumhash: SHA-256 of many sum tree messages per call, linked to
  OpenSSL's libcrypto (without it, prover/tree.py hashes with hashlib);
- prover._userindex: a ledger's user ids numbered outside Python objects
  (without it, prover/users.py keeps a dict and a list).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "prover._sumhash",
            sources=["prover/_sumhash.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "prover._userindex",
            sources=["prover/_userindex.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
