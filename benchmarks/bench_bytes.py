"""Bytes per epoch per subscriber on the root stream, and the size of a proof
file, by number of assets, subscription and encoding (PROTOCOL §6, §11.2).

    python benchmarks/bench_bytes.py [--assets 4,50,500] [--epochs 86400]
                                     [--witnesses 2] [--height 20]

For each number of assets it builds one epoch as a custodian publishes it:
every asset with a tree of ``--height`` levels and two reserve sources, one
attested by a signed on-chain report and one not; the log holds ``--epochs``
records (a day of 1 s epochs by default), and the checkpoint carries the
cosignatures of ``--witnesses`` witnesses. Each frame is verified as a
subscriber verifies it (``verifier.audit.check_epoch``, from the state after
the previous epoch) before it is measured. Sizes are WebSocket payloads
(the frame header adds 2 to 10 bytes): JSON text frames, and the
``solvency-msgpack`` binary frames.

Subscriptions: all assets (a full record), one asset (``assets=A000``), and
checkpoints only; for the first two, a connection's first frame (every
signed report its entries bind) and a later one (the reports new since the
previous epoch: none, as in most epochs). Proof files: a user holding four assets, at ``--height``
and at height 8 (500 assets, 20,000 users holding 5 each: about 200
holders an asset).
"""

from __future__ import annotations

import argparse
import hashlib
from functools import cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import rfc9162
from verifier.assetmap import AssetMap
from verifier.audit import AuditState, check_epoch
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.cosignature import cosign, witness_key_for
from verifier.hashing import HASHER
from verifier.proof import AssetPath, ProofFile
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.selection import select_entries
from verifier.stream import AssetsMessage, CheckpointMessage, EpochMessage, StreamMessage
from verifier.stream_binary import to_msgpack
from verifier.subscription import Subscription
from verifier.sumtree import PathStep

ORIGIN = "bench.example/solvency"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ATTESTER = Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
NOW_MS = 1_790_000_000_000


def fake(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def record_of(epoch: int, assets: int, height: int) -> tuple[EpochRecord, list[bytes]]:
    """An epoch of ``assets`` assets and the signed reports it binds."""
    states, reports = [], []
    for i in range(assets):
        asset = f"A{i:03d}"
        report = ReserveReport("cold", asset, 7 * 10**11, NOW_MS - 30_000, "bitcoin", 917_000)
        signed = SignedReport.parse(sign_report(report, ATTESTER))
        reports.append(signed.note)
        sources = (
            ReserveSource("cold", report.amount, report.as_of_ms, signed.key_id, signed.hash),
            ReserveSource("hot", 4 * 10**11, NOW_MS - 1_000),
        )
        reserves = sum(s.amount for s in sources)
        liabilities = 10**12 + i
        status = Status.SOLVENT if reserves >= liabilities else Status.INSOLVENT
        states.append(
            AssetState(asset, 8, height, fake(asset), liabilities, reserves, status, sources)
        )
    return EpochRecord(epoch, NOW_MS, 60_000, tuple(states)), reports


def frames(
    assets: int, epochs: int, witnesses: int, height: int
) -> tuple[AuditState, EpochRecord, dict[str, StreamMessage]]:
    """The state after epoch ``epochs - 2`` and the frames of the last epoch."""
    record, reports = record_of(epochs - 1, assets, height)
    last = rfc9162.leaf_hash(record.header.encode())

    @cache
    def range_root(start: int, end: int) -> bytes:
        if end - start == 1:
            return last if start == epochs - 1 else rfc9162.leaf_hash(fake("header", start))
        k = 1 << ((end - start - 1).bit_length() - 1)
        return rfc9162.node_hash(range_root(start, start + k), range_root(start + k, end))

    body = Checkpoint(ORIGIN, epochs, range_root(0, epochs)).to_note_body()
    note = sign_note(body, ORIGIN, KEY)
    for w in range(witnesses):
        witness = Ed25519PrivateKey.from_private_bytes(fake("witness", w))
        note += cosign(body, f"witness-{w}.example", witness, NOW_MS // 1000 + 1)
    inclusion = tuple(rfc9162.inclusion_path(epochs - 1, epochs, range_root))
    consistency = tuple(rfc9162.last_consistency(epochs, inclusion, last))
    old = Checkpoint(ORIGIN, epochs - 1, range_root(0, epochs - 1)).to_note_body()
    state = AuditState(ORIGIN, epochs - 1, range_root(0, epochs - 1), NOW_MS - 1000, old.decode())
    one = select_entries(record, ["A000"], AssetMap(HASHER, record.entries))
    return (
        state,
        record,
        {
            "all assets, first": EpochMessage(record.encode(), note, inclusion, tuple(reports)),
            "all assets, later": EpochMessage(record.encode(), note, inclusion),
            "one asset, first": AssetsMessage(
                record.header.encode(), one, note, inclusion, (reports[0],)
            ),
            "one asset, later": AssetsMessage(record.header.encode(), one, note, inclusion),
            "checkpoints only": CheckpointMessage(note, consistency),
        },
    )


SUBSCRIPTIONS = {
    "all": Subscription(),
    "one": Subscription(assets=frozenset({"A000"})),
    "checkpoints": Subscription(checkpoints=True),
}


def proof_bytes(record: EpochRecord, height: int, inclusion: tuple[bytes, ...]) -> int:
    """The size of the proof file of a user holding the record's first four assets."""
    asset_map = AssetMap(HASHER, record.entries)
    legs = []
    for entry in select_entries(record, [a.asset for a in record.assets[:4]], asset_map):
        path = tuple(PathStep(fake("sibling", entry.index, i), 10**9 * 2**i) for i in range(height))
        legs.append(AssetPath(entry.entry, entry.index, entry.path, 123_456, 10**8, path))
    proof = ProofFile(
        "user-000123456", fake("salt"), record.header.encode(), tuple(legs), inclusion, b"x" * 400
    )
    return len(proof.to_json().encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", default="4,50,500")
    parser.add_argument("--epochs", type=int, default=86_400)
    parser.add_argument("--witnesses", type=int, default=2)
    parser.add_argument("--height", type=int, default=20)
    args = parser.parse_args()
    vkey = verifier_key_for(ORIGIN, KEY.public_key())
    witness_keys = [
        witness_key_for(
            f"witness-{w}.example",
            Ed25519PrivateKey.from_private_bytes(fake("witness", w)).public_key(),
        )
        for w in range(args.witnesses)
    ]
    print(
        f"log of {args.epochs} epochs, {args.witnesses} witness cosignatures, trees of height "
        f"{args.height}, 2 reserve sources an asset (1 attested)\n"
    )
    print(
        f"{'assets':>6} | {'subscription, frame':<19} | {'JSON':>9} | {'msgpack':>9} | of all, JSON"
    )
    proofs = []
    for count in (int(n) for n in args.assets.split(",")):
        state, record, messages = frames(count, args.epochs, args.witnesses, args.height)
        full = len(messages["all assets, later"].to_json().encode())
        for name, message in messages.items():
            check_epoch(
                state,
                message,
                vkey,
                ORIGIN,
                witnesses=witness_keys,
                quorum=args.witnesses,
                now=NOW_MS / 1000 + 5,
                subscription=SUBSCRIPTIONS[name.split()[0]],
            )
            text, binary = len(message.to_json().encode()), len(to_msgpack(message))
            print(f"{count:>6} | {name:<19} | {text:>9,} | {binary:>9,} | {text / full:.3f}")
        assert isinstance(messages["all assets, later"], EpochMessage)
        inclusion = messages["all assets, later"].inclusion
        proofs.append(
            (count, proof_bytes(record, args.height, inclusion), proof_bytes(record, 8, inclusion))
        )
    print(f"\nproof file of 4 assets (JSON bytes): at height {args.height} | at height 8")
    for count, high, low in proofs:
        print(f"{count:>6} assets: {high:>8,} | {low:>8,}")


if __name__ == "__main__":
    main()
