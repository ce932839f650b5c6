"""The tree worker's messages: every value round-trips through msgpack, sums
past 64 bits included; refusals stand for today's exceptions."""

from __future__ import annotations

import msgspec
import pytest

from prover.errors import NotRetained, ProverError
from prover.ledger import Ledger
from prover.mapped import ProofBasis
from prover.periods import SaltPeriod
from prover.worker_messages import (
    Applied,
    Apply,
    Begin,
    Build,
    Built,
    Closed,
    Done,
    Export,
    ExportFailed,
    Failed,
    Found,
    FoundMany,
    Pending,
    ProofOf,
    ProofsOf,
    Release,
    Reply,
    Request,
    Rows,
    Snapshot,
    Snapshotted,
    Stage,
    Stop,
    Unhashed,
    Unretained,
    WireProof,
    WireRoot,
    WriteProofs,
    Written,
    decode_reply,
    decode_request,
    encode,
    error_of,
    merge_proofs,
    merge_wire_proofs,
)
from verifier.hashing import MAX_BALANCE
from verifier.selection import MapEntry

PERIOD = SaltPeriod(4, 1_700_000_000_000, bytes(range(32)))
BASIS = ProofBasis(
    b"header",
    {"BTC": MapEntry(b"btc entry", 0, (bytes(range(32)),)), "ETH": MapEntry(b"eth", 1, ())},
    (bytes(32), bytes(range(32))),
    b"note\n",
)
BIG = [(f"u{i}", "BTC", MAX_BALANCE) for i in range(8)] + [("a", "BTC", 1), ("a", "ETH", 3)]


def _ledger() -> Ledger:
    return Ledger.build(PERIOD, ["BTC", "ETH"], BIG)


def test_every_request_round_trips() -> None:
    proof = _ledger().proof("a")
    assert proof is not None
    requests: list[Request] = [
        Begin(PERIOD, ["BTC", "ETH"], 3, 1 << 20),
        Begin(PERIOD, ["BTC"], 0, 0, {"BTC": 1 << 33}, 0.125, ahead=True),
        Rows(BIG),
        Build(),
        Stage(BIG),
        Release(),
        Apply(["SOL"], BIG),
        Unhashed(),
        ProofOf("a", 2),
        Snapshot(ids=True),
        Export("/tmp/out", 5, 7, BASIS),
        ProofsOf(["a", "u1"]),
        WriteProofs("/tmp/out", [WireProof.of(proof)], BASIS),
        Stop(),
    ]
    for request in requests:
        assert decode_request(encode(request)) == request
    begin = decode_request(encode(requests[0]))
    assert isinstance(begin, Begin) and begin.period == PERIOD  # the secret, whole
    export = decode_request(encode(requests[10]))
    assert isinstance(export, Export) and export.basis == BASIS


def test_every_reply_round_trips_with_sums_past_64_bits() -> None:
    ledger = _ledger()
    roots = tuple(WireRoot.of(r) for r in ledger.roots())
    assert ledger.roots()[0].total > MAX_BALANCE  # msgpack integers stop at 2**64 - 1
    proof = ledger.proof("a")
    assert proof is not None and any(s.sum > MAX_BALANCE for s in proof.entries[0][3])
    replies: list[Reply] = [
        Done(),
        Built(roots),
        Closed(roots, 0.25),
        Closed(roots, 0.25, {"BTC": 1 << 33, "ETH": 0}, 5_000, ["ETH"]),
        Pending(12),
        Found(WireProof.of(proof)),
        Found(None),
        FoundMany([WireProof.of(proof), None]),
        Snapshotted(2, ["a", "u1"]),
        Snapshotted(2),
        Written(2),
        Unretained("gone"),
        ExportFailed("exists"),
        Failed("ValueError: no"),
    ]
    for reply in replies:
        assert decode_reply(encode(reply)) == reply
    closed = decode_reply(encode(Closed(roots, 0.25, ledger.room(), 7, ["BTC"])))
    assert isinstance(closed, Closed)
    room = {"BTC": 32 - 9, "ETH": 32 - 1}
    assert closed.value() == Applied(tuple(ledger.roots()), 0.25, room, 7, ("BTC",))
    found = decode_reply(encode(Found(WireProof.of(proof))))
    assert isinstance(found, Found) and found.proof is not None
    assert found.proof.value() == proof


def test_a_request_is_no_reply_and_unknown_messages_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_reply(encode(Stop()))
    with pytest.raises(msgspec.ValidationError):
        decode_request(encode(Done()))
    with pytest.raises(msgspec.DecodeError):
        decode_request(msgspec.msgpack.encode({"type": "Rm", "path": "/"}))
    with pytest.raises(msgspec.DecodeError):
        decode_request(msgspec.msgpack.encode(("stage", b"rows")))  # the old pickled commands


def test_refusals_stand_for_the_exceptions_of_before() -> None:
    unretained = error_of(Unretained("the trees of 3 epochs ago are not retained"), "Found")
    assert type(unretained) is NotRetained
    assert str(unretained) == "the trees of 3 epochs ago are not retained"
    failed_export = error_of(ExportFailed("/x/a.json exists"), "Written")
    assert type(failed_export) is ProverError and str(failed_export) == "/x/a.json exists"
    failed = error_of(Failed("ProverError: unknown asset DOGE"), "Closed")
    assert type(failed) is RuntimeError
    assert str(failed) == "tree worker: ProverError: unknown asset DOGE"
    odd = error_of(Done(), "Closed")
    assert type(odd) is RuntimeError and str(odd) == "tree worker: answered Done, not Closed"


def test_merged_proofs_hold_every_asset_in_order() -> None:
    whole = _ledger()
    btc = Ledger.build(PERIOD, ["BTC"], [r for r in BIG if r[1] == "BTC"])
    eth = Ledger.build(PERIOD, ["ETH"], [r for r in BIG if r[1] == "ETH"])
    for user in ["a", "u1", "u2", "nobody"]:
        parts = [eth.proof(user), btc.proof(user)]
        assert merge_proofs(parts) == whole.proof(user)
        wire = merge_wire_proofs(None if p is None else WireProof.of(p) for p in parts)
        assert (None if wire is None else wire.value()) == whole.proof(user)
