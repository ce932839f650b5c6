"""``solvency-verify witness`` and ``witness-key``: run a witness, make its key.

    witness --key-file K --log VKEY [--log VKEY ...] --state DIR [--listen HOST:PORT]
    witness-key --name NAME --out FILE

The key file holds one line, ``PRIVATE+KEY+<name>+<key id>+<base64(0x04 ||
seed)>`` (PROTOCOL §12.2), and must not be readable by group or others.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.cosignature import witness_key_for
from verifier.errors import FormatError
from verifier.inputs import OperationalError, UsageError, load_key, read_input
from verifier.witness import Witness, format_signer_key, parse_signer_key

__all__ = ["DEFAULT_LISTEN", "cmd_witness", "cmd_witness_key", "load_signer_key"]

DEFAULT_LISTEN = "127.0.0.1:7380"
log = logging.getLogger("solvency.witness")


def load_signer_key(path: str) -> tuple[str, Ed25519PrivateKey]:
    """The witness's name and private key from its key file, which only its
    owner may read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(f"cannot read --key-file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"--key-file {path} is not a regular file")
    if mode & 0o077:
        raise UsageError(
            f"--key-file {path} is accessible by group or others (mode {mode & 0o777:o}):"
            f" chmod 600 {path}"
        )
    try:
        return parse_signer_key(read_input(path).decode("utf-8", "replace"))
    except FormatError as exc:
        raise UsageError(f"--key-file {path}: {exc}") from None


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen must be HOST:PORT, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def cmd_witness(args: argparse.Namespace) -> int:
    """Serve add-checkpoint until SIGTERM or SIGINT."""
    from verifier.witness_server import (  # here: the other commands need no HTTP server
        StateError,
        StateStore,
        WitnessHTTPServer,
        WitnessService,
    )

    name, private_key = load_signer_key(args.key_file)
    logs = [load_key(text, "--log") for text in args.log]
    address = listen_address(args.listen)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s witness %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    witness = Witness(name, private_key, logs)
    store = StateStore(Path(args.state))
    try:
        store.open()
        service = WitnessService(witness, store)
    except StateError as exc:
        store.close()
        raise UsageError(str(exc)) from None
    for origin, state in sorted(store.states.items()):
        configured = "" if origin in witness.logs else " (no --log for it: kept, unused)"
        log.info("state of %r: size %d%s", origin, state.size, configured)
    try:
        server = WitnessHTTPServer(address, service)
    except OSError as exc:
        store.close()
        raise OperationalError(f"cannot listen on {args.listen}: {exc.strerror}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    log.info(
        "witness %s listening on http://%s:%d/add-checkpoint for %d log(s)",
        witness.key,
        host,
        port,
        len(witness.logs),
    )
    try:
        stop.wait()
    finally:
        for signum, previous_handler in previous.items():
            signal.signal(signum, previous_handler)
        server.shutdown()
        server.server_close()
        store.close()
        log.info("witness stopped")
    return 0


def cmd_witness_key(args: argparse.Namespace) -> int:
    """Create a new key file (never overwrite one) and print the witness key."""
    private_key = Ed25519PrivateKey.generate()
    try:
        text = format_signer_key(args.name, private_key) + "\n"
    except FormatError as exc:
        raise UsageError(f"--name: {exc}") from None
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--out {args.out} exists: not overwriting a key") from None
    except OSError as exc:
        raise OperationalError(f"cannot create {args.out}: {exc.strerror}") from None
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    key = witness_key_for(args.name, private_key.public_key())
    if args.json:
        print(json.dumps({"witness_key": str(key), "key_file": args.out}))
    else:
        print(key)
    return 0
