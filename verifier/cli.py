"""``solvency-verify``: the customer's and the auditor's command line.

Commands:
    proof FILE --key VKEY [--user ID] [--json]        verify a proof file
    proof --url URL --user ID --token T --key VKEY    fetch one from the prover, verify it
    watch URL --key VKEY --state DIR [--json] [--keep-going] [--max-silence S]
          [--attester VKEY ...]                       and check the signed reserve reports
          [--assets A,B | --checkpoints-only]         follow some assets, or the log alone
          [--binary]                                  in MessagePack (the binary extra)
    relay --upstream URL --listen HOST:PORT --key VKEY --state DIR
          [--history N] [--max-subscribers N]         verify a root stream and serve it
          [--binary]                                  follow it in MessagePack
    checkpoint FILE --key VKEY                        verify a signed checkpoint
    consistency OLD NEW PROOF --key VKEY              verify that NEW extends OLD
    witness --key-file K --log VKEY --state DIR       run a witness (C2SP tlog-witness)
    witness-key --name NAME --out FILE                make a witness's key file

proof, watch, relay and checkpoint also take ``--witness VKEY`` (repeatable) and
``--quorum K``: the checkpoint must be cosigned by K of those witnesses
(docs/PROTOCOL.md §12.3).

Exit status: see ``EXIT_TABLE`` (printed by ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, NoReturn

from verifier import rfc9162
from verifier.checkpoint import verify_checkpoint
from verifier.display import cosigned_line, cosigners, proof_summary
from verifier.errors import FormatError, VerificationError
from verifier.exits import (
    EXIT_ERROR,
    EXIT_INVALID,
    EXIT_NOT_SOLVENT,
    EXIT_USAGE,
    EXIT_VALID,
)
from verifier.hashing import printable_id
from verifier.inputs import OperationalError, UsageError, load_key, load_witnesses, read_input
from verifier.proof import ProofFile, ProofReport, verify_proof
from verifier.quorum import check_quorum
from verifier.record import Status
from verifier.subscription import parse_chosen
from verifier.version import VERIFIER_DISTRIBUTION, VersionAction

__all__ = [
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_NOT_SOLVENT",
    "EXIT_USAGE",
    "EXIT_VALID",
    "OperationalError",
    "UsageError",
    "load_key",
    "main",
    "read_input",
]

EXIT_TABLE = """\
exit status (every command):
  0  valid; for proof, every asset of the proof is also solvent
  1  invalid: a check failed, or what the custodian signed or sent is malformed
     (the check is named: "format" for malformed); for watch and relay, an alarm
     was raised
  2  usage: bad arguments; a key, URL or --state that does not parse or does not
     match; an input file that cannot be read; on the first contact of watch or
     relay, a server whose checkpoints do not verify with --key and --origin (no evidence
     is written: that is configuration, not evidence); a 4xx answer to proof --url
  3  operational error: network, a file the command writes (--state, evidence), or
     a bug of ours (SOLVENCY_DEBUG=1 or --debug prints its traceback)
  4  proof only: the balances are included, but some asset of the proof is insolvent or unproven
"""


# proof


def cmd_proof(args: argparse.Namespace) -> int:
    key = load_key(args.key)
    witnesses, quorum = load_witnesses(args.witness, args.quorum)

    def verify(data: bytes) -> ProofReport:
        proof = ProofFile.parse(data)
        return verify_proof(proof, key, user=args.user, witnesses=witnesses, quorum=quorum)

    if args.url:
        if not (args.user and args.token):
            raise UsageError("--url needs --user and --token")
        from verifier.fetch import fetch_proof, until_witnessed  # here: no HTTP client for files

        report = until_witnessed(lambda: verify(fetch_proof(args.url, args.user, args.token)))
    elif args.file:
        report = verify(read_input(args.file))
    else:
        raise UsageError("give a proof FILE or --url")
    code = EXIT_VALID if report.record.solvent else EXIT_NOT_SOLVENT
    summary = proof_summary(report, code)
    if args.json:
        print(json.dumps(summary, indent=2))
        return code
    print(f"VALID: {printable_id(report.user)}'s balances are included in epoch {report.epoch}")
    print(
        f"  signed by {printable_id(key.name)} at {summary['time']}, "
        f"log of {report.checkpoint.size} epochs"
    )
    if witnesses:
        print(cosigned_line(report.cosignatures, quorum))
    for a in summary["assets"]:
        print(
            f"  {printable_id(a['asset']):<8} your balance {a['balance']:>20}   "
            f"liabilities {a['liabilities']:>20}   reserves {a['reserves']:>20}   {a['status']}"
        )
    if code == EXIT_VALID:
        print("  custodian solvent in every asset you hold (the others are not in this proof)")
    else:
        others = [
            f"{printable_id(a.asset)} {a.status.name.lower()}"
            for a in report.record.assets
            if a.status is not Status.SOLVENT
        ]
        print(f"  WARNING: not every asset is proven solvent: {', '.join(others)}")
    return code


# checkpoint and consistency


def cmd_checkpoint(args: argparse.Namespace) -> int:
    key = load_key(args.key)
    witnesses, quorum = load_witnesses(args.witness, args.quorum)
    note = read_input(args.file)
    cp = verify_checkpoint(note, key, args.origin)
    cosignatures = check_quorum(note, witnesses, quorum, record_ms=None)
    if args.json:
        doc = {"valid": True, "exit": 0, "origin": cp.origin, "size": cp.size}
        print(json.dumps({**doc, "root": cp.root.hex(), "cosigned_by": cosigners(cosignatures)}))
    else:
        print(f"VALID: {printable_id(cp.origin)} size {cp.size} root {cp.root.hex()}")
        if witnesses:
            print(cosigned_line(cosignatures, quorum))
    return EXIT_VALID


def cmd_consistency(args: argparse.Namespace) -> int:
    key = load_key(args.key)
    old = verify_checkpoint(read_input(args.old), key, args.origin)
    new = verify_checkpoint(read_input(args.new), key, old.origin)
    raw = read_input(args.proof).decode("utf-8", "replace")
    try:
        hashes = [bytes.fromhex(line) for line in raw.split()]
    except ValueError:
        raise FormatError("PROOF must hold one hex hash per line") from None
    rfc9162.verify_consistency(old.size, new.size, old.root, new.root, hashes)
    if args.json:
        print(json.dumps({"valid": True, "exit": 0, "old_size": old.size, "new_size": new.size}))
    else:
        print(f"VALID: the log of {new.size} extends the log of {old.size}")
    return EXIT_VALID


def cmd_watch(args: argparse.Namespace) -> int:
    from verifier.watch import watch  # here: proof need not import asyncio and websockets

    return watch(args)


def cmd_relay(args: argparse.Namespace) -> int:
    from verifier.relay import relay  # here: only the relay serves WebSockets

    return relay(args)


def cmd_witness(args: argparse.Namespace) -> int:
    from verifier.witness_cli import cmd_witness  # here: the others need no HTTP server

    return cmd_witness(args)


def cmd_witness_key(args: argparse.Namespace) -> int:
    from verifier.witness_cli import cmd_witness_key

    return cmd_witness_key(args)


# entry point


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of exiting, so that ``main`` reports it (as JSON too)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return int(text)


def _chosen(text: str) -> frozenset[str]:
    try:
        return parse_chosen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="solvency-verify",
        description=__doc__.splitlines()[0],
        epilog=EXIT_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction, distribution=VERIFIER_DISTRIBUTION)
    parser.add_argument("--debug", action="store_true", help="print tracebacks of our own bugs")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, epilog=EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        return p

    def witness_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--witness",
            action="append",
            metavar="VKEY",
            help="a witness's key, or a file of keys one per line (repeatable)",
        )
        p.add_argument(
            "--quorum",
            type=int,
            metavar="K",
            help="cosignatures required, by distinct --witness keys (default: all of them)",
        )

    p = command("proof", "verify a user's inclusion proof")
    p.add_argument("file", nargs="?", help="proof file (- for standard input)")
    p.add_argument("--key", required=True, help="verifier key, or a file holding it")
    p.add_argument("--user", help="the user id the proof must be for")
    p.add_argument("--url", help="fetch the proof from the prover (ws:// or http://)")
    p.add_argument("--token", help="the user's proof token, with --url")
    witness_options(p)
    p.set_defaults(run=cmd_proof)

    def auditor_options(p: argparse.ArgumentParser) -> None:
        """What watch and relay verify the root stream with."""
        p.add_argument("--key", required=True, help="verifier key, or a file holding it")
        p.add_argument("--state", required=True, help="directory keeping the last verified state")
        p.add_argument("--origin", help="expected log origin (default: the key's name)")
        p.add_argument(
            "--token",
            default=os.environ.get("SOLVENCY_AUDITOR_TOKEN") or None,
            help="this auditor's token, for a reserved slot on the root stream"
            " (default: $SOLVENCY_AUDITOR_TOKEN)",
        )
        p.add_argument(
            "--max-silence",
            type=_positive,
            default=30.0,
            metavar="S",
            help="alarm (stale-log) once no checkpoint has verified for S seconds, counted from"
            " the last verified one (or the start) whether or not the prover is reachable, and"
            " with --keep-going again every further S seconds of silence (default 30)",
        )
        p.add_argument(
            "--attester",
            action="append",
            default=[],
            metavar="VKEY",
            help="a reserve source's verifier key, or a file of them one per line (repeatable):"
            " every asset whose reserves rest on a report no such key signed is alarmed as"
            " unattested, and a record misstating a signed report as report-mismatch"
            " (PROTOCOL §13)",
        )
        p.add_argument(
            "--binary",
            action="store_true",
            help="offer the solvency-msgpack subprotocol: frames in canonical MessagePack,"
            " smaller and quicker to read than JSON (needs msgspec: install"
            " solvency-stream-verifier[binary]); a server that does not select it is"
            " followed in JSON",
        )
        witness_options(p)

    p = command("watch", "follow and verify every epoch")
    p.add_argument("url", help="the prover, e.g. ws://127.0.0.1:8765")
    auditor_options(p)
    follow = p.add_mutually_exclusive_group()
    follow.add_argument(
        "--assets",
        type=_chosen,
        metavar="A,B",
        help="follow these assets only (1 to 64 ids): each epoch's header and their entries"
        " are verified, and that the record has them; the other assets are not",
    )
    follow.add_argument(
        "--checkpoints-only",
        action="store_true",
        help="follow the log's checkpoints only: signatures, sizes, consistency and"
        " witnesses are verified, no record",
    )
    p.add_argument("--keep-going", action="store_true", help="report violations, don't stop")
    p.add_argument("--max-epochs", type=int, default=0, help="stop after N epochs (0: never)")
    p.set_defaults(run=cmd_watch)

    p = command("relay", "verify a root stream and serve it to subscribers of its own")
    p.add_argument("--upstream", required=True, help="the prover or a relay, e.g. ws://host:8765")
    p.add_argument("--listen", default="127.0.0.1:8766", help="HOST:PORT (default %(default)s)")
    auditor_options(p)
    p.add_argument(
        "--history",
        type=_count,
        default=3600,
        metavar="N",
        help="last frames kept for since=N (default 3600)",
    )
    p.add_argument(
        "--max-subscribers",
        type=_count,
        default=1000,
        metavar="N",
        help="past it: 503 busy (default 1000)",
    )
    p.set_defaults(run=cmd_relay)

    p = command("checkpoint", "verify a signed checkpoint")
    p.add_argument("file")
    p.add_argument("--key", required=True)
    p.add_argument("--origin")
    witness_options(p)
    p.set_defaults(run=cmd_checkpoint)

    p = command("consistency", "verify that one checkpoint extends another")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("proof", help="consistency proof: one hex hash per line")
    p.add_argument("--key", required=True)
    p.add_argument("--origin")
    p.set_defaults(run=cmd_consistency)

    p = command("witness", "run a witness that cosigns a log's consistent checkpoints")
    p.add_argument("--key-file", required=True, help="the witness's key file (witness-key)")
    p.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="VKEY",
        help="a log's verifier key, or a file holding it; its name is the log's origin"
        " (repeatable)",
    )
    p.add_argument("--state", required=True, help="directory of the last cosigned checkpoints")
    p.add_argument("--listen", default="127.0.0.1:7380", help="HOST:PORT (default %(default)s)")
    p.set_defaults(run=cmd_witness)

    p = command("witness-key", "create a witness's key file and print its witness key")
    p.add_argument("--name", required=True, help="the witness's name, e.g. witness.example/w1")
    p.add_argument("--out", required=True, help="the key file to create (mode 600)")
    p.set_defaults(run=cmd_witness_key)
    return parser


def _fail(code: int, as_json: bool | str, reason: str, check: str | None = None) -> int:
    """Report a failure on stderr, and with ``--json`` as one JSON object on stdout
    (``as_json="watch"``: one more event of watch's stream, ``"event": "error"``)."""
    if check is not None:
        print(f"INVALID {check}: {printable_id(reason)}", file=sys.stderr)
    else:
        print(f"error: {printable_id(reason)}", file=sys.stderr)
    if as_json:
        doc: dict[str, Any] = {"event": "error"} if as_json == "watch" else {}
        doc.update(valid=False if code == EXIT_INVALID else None, exit=code)
        if check is not None:
            doc["check"] = check
        else:
            doc["error"] = "usage" if code == EXIT_USAGE else "operational"
        doc["reason"] = reason
        print(json.dumps(doc), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json: bool | str = "--json" in argv
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except UsageError as exc:
        return _fail(EXIT_USAGE, as_json, str(exc))
    as_json = args.json and ("watch" if args.command in ("watch", "relay") else True)
    try:
        result: int = args.run(args)
        return result
    except VerificationError as exc:
        return _fail(EXIT_INVALID, as_json, exc.detail, exc.check)
    except FormatError as exc:
        return _fail(EXIT_INVALID, as_json, f"malformed: {exc}", "format")
    except UsageError as exc:
        return _fail(EXIT_USAGE, as_json, str(exc))
    except OperationalError as exc:
        return _fail(EXIT_ERROR, as_json, str(exc))
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if args.debug or os.environ.get("SOLVENCY_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        return _fail(EXIT_ERROR, as_json, f"internal error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
