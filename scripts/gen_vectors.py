"""Generate the known-answer vectors in tests/vectors/ (docs/PROTOCOL.md §8).

Usage:
    python scripts/gen_vectors.py           # rewrite tests/vectors/
    python scripts/gen_vectors.py --check   # exit 1 if the committed files differ

Everything is derived from fixed inputs (fixed salts, padding key, Ed25519
keys of the log and of two witnesses, cosignature times; Ed25519 signatures
are deterministic), so the output is byte-stable. Every sum tree hash is the
current record version's hasher's (``verifier.hashing.hasher_for(VERSION)``),
and the trees are built here straight from it, independently of prover/.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier import rfc9162
from verifier.assetmap import AssetMap
from verifier.checkpoint import (
    Checkpoint,
    VerifierKey,
    sign_note,
    split_note,
    verifier_key_for,
)
from verifier.cosignature import WitnessKey, cosign, witness_key_for
from verifier.errors import SolvencyError, VerificationError
from verifier.hashing import VERSION, encode_sum, hasher_for
from verifier.proof import AssetPath, ProofFile, verify_proof
from verifier.record import AssetState, EpochRecord, RecordHeader, ReserveSource, Status
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.selection import select_entries
from verifier.sumtree import PathStep

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors"
HASHER = hasher_for(VERSION)  # the sum tree hashing rules the vectors are of

ORIGIN = "example.com/solvency/test"
SIGNING_SEED = bytes(range(1, 33))  # test key only: never use a fixed seed for real
OTHER_SEED = bytes(range(33, 65))
PADDING_KEY = hashlib.sha256(b"vectors padding key").digest()
TIMESTAMP_MS = 1_790_000_000_000
MAX_AGE_MS = 60_000

# Two test reserve sources' attester keys (fixed seeds: tests only) and their
# signed reports the record binds (PROTOCOL §13); ETH's hot source is unattested.
ATTESTERS = {"cold-1": bytes(range(129, 161)), "hot": bytes(range(161, 193))}
REPORTS = {
    ("BTC", "cold-1"): ReserveReport(
        "cold-1", "BTC", 60_000_000_000, TIMESTAMP_MS - 1_000, "bitcoin", 917_000
    ),
    ("BTC", "hot"): ReserveReport("hot", "BTC", 40_000_000_000, TIMESTAMP_MS - 500),
}

# Two test witnesses (fixed seeds: tests only), their cosignatures of the proof's
# checkpoint a few seconds after its epochs, and the verifier's clock (PROTOCOL §12.3).
WITNESSES = {"witness-a.example": bytes(range(65, 97)), "witness-b.example": bytes(range(97, 129))}
COSIGNED_AT = TIMESTAMP_MS // 1000 + 3
NOW = TIMESTAMP_MS // 1000 + 100
WITNESS_CASE = {"witnesses": ["witness-keys.txt"], "quorum": 2, "now": NOW}


# An asset entry of no liabilities and no reserve sources (PROTOCOL §4).
ENTRY_EXAMPLE = bytes((3,)) + b"BTC" + bytes((8, 0)) + bytes(32 + 16 + 16) + bytes((0, 0))


def salt_of(user: str) -> bytes:
    return hashlib.sha256(b"vectors salt " + user.encode()).digest()


# 1. Single hashing vectors: message bytes and digest, checkable with sha256sum.


def hashing_vectors() -> list[dict[str, Any]]:
    salt = salt_of("alice")
    c = HASHER.commitment("alice", salt)
    cases = [
        (
            "commitment",
            {"user": "alice", "salt": salt.hex()},
            bytes((HASHER.commitment_tag, 5)) + b"alice" + salt,
            c,
        ),
        (
            "leaf",
            {"asset": "BTC", "commitment": c.hex(), "amount": "150000000"},
            HASHER.leaf_prefix("BTC") + c + encode_sum(150_000_000),
            HASHER.leaf_hash("BTC", c, 150_000_000),
        ),
        (
            "padding",
            {"asset": "BTC", "padding_key": PADDING_KEY.hex(), "slot": 6},
            HASHER.padding_prefix("BTC") + PADDING_KEY + (6).to_bytes(8, "big"),
            HASHER.padding_hash("BTC", PADDING_KEY, 6),
        ),
        (
            "node",
            {
                "left": c.hex(),
                "left_sum": "7",
                "right": PADDING_KEY.hex(),
                "right_sum": str(2**64 - 1),
            },
            bytes((HASHER.node_tag,)) + c + encode_sum(7) + PADDING_KEY + encode_sum(2**64 - 1),
            HASHER.node_hash(c, 7, PADDING_KEY, 2**64 - 1),
        ),
        (
            "asset-map-entry",
            {"entry": ENTRY_EXAMPLE.hex()},
            bytes((HASHER.entry_tag,)) + ENTRY_EXAMPLE,
            HASHER.entry_hash(ENTRY_EXAMPLE),
        ),
        (
            "asset-map-node",
            {"left": c.hex(), "right": PADDING_KEY.hex()},
            bytes((HASHER.map_node_tag,)) + c + PADDING_KEY,
            HASHER.map_node_hash(c, PADDING_KEY),
        ),
        ("asset-map-empty", {}, bytes((HASHER.map_node_tag,)), HASHER.empty_map()),
    ]
    out = []
    for name, inputs, message, digest in cases:
        assert HASHER.digest(message).digest() == digest, name
        out.append(
            {"name": name, "inputs": inputs, "message": message.hex(), "digest": digest.hex()}
        )
    return out


# 2. Two small trees and the epoch record over them.

HOLDINGS = {
    "BTC": (8, 3, {"alice": (5, 150_000_000), "bob": (0, 2_500), "carol": (3, 99_000_000_000)}),
    "ETH": (9, 2, {"alice": (2, 3_000_000_000), "dave": (1, 7)}),
}


def build_tree(
    asset: str, height: int, users: dict[str, tuple[int, int]]
) -> list[list[tuple[bytes, int]]]:
    """All levels of one sum tree, leaves first: each node is (hash, sum)."""
    by_slot = {slot: (user, amount) for user, (slot, amount) in users.items()}
    level = []
    for slot in range(1 << height):
        if slot in by_slot:
            user, amount = by_slot[slot]
            user_commitment = HASHER.commitment(user, salt_of(user))
            level.append((HASHER.leaf_hash(asset, user_commitment, amount), amount))
        else:
            level.append((HASHER.padding_hash(asset, PADDING_KEY, slot), 0))
    levels = [level]
    while len(level) > 1:
        level = [
            (HASHER.node_hash(lh, ls, rh, rs), ls + rs)
            for (lh, ls), (rh, rs) in zip(level[0::2], level[1::2], strict=True)
        ]
        levels.append(level)
    return levels


def path_of(levels: list[list[tuple[bytes, int]]], slot: int) -> tuple[PathStep, ...]:
    return tuple(PathStep(*levels[lvl][(slot >> lvl) ^ 1]) for lvl in range(len(levels) - 1))


def signed_report(key: tuple[str, str]) -> SignedReport:
    report = REPORTS[key]
    signer = Ed25519PrivateKey.from_private_bytes(ATTESTERS[report.source])
    return SignedReport.parse(sign_report(report, signer))


def attested_source(key: tuple[str, str]) -> ReserveSource:
    """A record's source entry as its signed report states it."""
    signed = signed_report(key)
    r = signed.report
    return ReserveSource(r.source, r.amount, r.as_of_ms, signed.key_id, signed.hash)


def report_vectors() -> dict[str, Any]:
    """The attester keys and each signed report: its fields, note and hash."""
    keys = {
        name: str(verifier_key_for(name, Ed25519PrivateKey.from_private_bytes(seed).public_key()))
        for name, seed in ATTESTERS.items()
    }
    reports = []
    for key in REPORTS:
        signed = signed_report(key)
        r = signed.report
        fields: dict[str, Any] = {"source": r.source, "asset": r.asset, "amount": str(r.amount)}
        fields |= {"as_of_ms": r.as_of_ms, "chain": r.chain, "block": r.block}
        reports.append(
            {
                "fields": fields,
                "body": r.to_note_body().decode(),
                "note": signed.note.decode(),
                "key_id": f"{signed.key_id:08x}",
                "hash": signed.hash.hex(),
            }
        )
    return {"attesters": keys, "reports": reports}


def make_record(epoch: int, trees: dict[str, list[list[tuple[bytes, int]]]]) -> EpochRecord:
    """BTC is solvent, its two sources attested by signed reports; ETH's only
    reserve source is stale and unattested, so ETH is unproven."""
    reserves = {
        "BTC": (
            attested_source(("BTC", "cold-1")),
            attested_source(("BTC", "hot")),
        ),
        "ETH": (ReserveSource("hot", 1_000_000_000, TIMESTAMP_MS - 120_000),),
    }
    status = {"BTC": Status.SOLVENT, "ETH": Status.UNPROVEN}
    assets = []
    for asset, (decimals, height, _) in HOLDINGS.items():
        root, total = trees[asset][-1][0]
        sources = reserves[asset]
        reserve_total = sum(s.amount for s in sources)
        assets.append(
            AssetState(asset, decimals, height, root, total, reserve_total, status[asset], sources)
        )
    return EpochRecord(epoch, TIMESTAMP_MS + epoch * 1000, MAX_AGE_MS, tuple(assets))


def asset_map_vectors() -> dict[str, Any]:
    """A record of five assets: its header, entries, the map's leaf hashes, root
    and every entry's map path, and the entries that prove what it says of
    some chosen asset ids, present or absent (PROTOCOL §4.4, §11.2)."""
    assets = tuple(
        AssetState(name, 8, 0, HASHER.padding_hash(name, PADDING_KEY, 0), 0, 0, Status.SOLVENT, ())
        for name in ("ADA", "BTC", "DOGE", "ETH", "SOL")
    )
    record = EpochRecord(7, TIMESTAMP_MS, MAX_AGE_MS, assets)
    asset_map = AssetMap(HASHER, record.entries)
    chosen_sets = [["BTC"], ["ETH", "SOL"], ["CAT"], ["AAA"], ["ZZZ"], ["BTC", "CAT", "XRP"]]
    return {
        "header": record.header.encode().hex(),
        "entries": [e.hex() for e in record.entries],
        "leaf_hashes": [HASHER.entry_hash(e).hex() for e in record.entries],
        "root": asset_map.root.hex(),
        "paths": [[h.hex() for h in asset_map.path(i)] for i in range(len(assets))],
        "selections": [
            {"chosen": chosen, "indices": [e.index for e in select_entries(record, chosen)]}
            for chosen in chosen_sets
        ],
    }


def signed_log(headers: list[bytes], body: bytes | None = None) -> tuple[list[bytes], bytes]:
    """Leaf hashes of a log of record ``headers`` and its checkpoint signed by
    the test key; ``body`` replaces the checkpoint body (to sign a malformed one)."""
    hashes = [rfc9162.leaf_hash(h) for h in headers]
    if body is None:
        body = Checkpoint(
            ORIGIN, len(headers), rfc9162.root_from_leaf_hashes(hashes)
        ).to_note_body()
    key = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    return hashes, sign_note(body, ORIGIN, key)


def build_all() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    vkey = verifier_key_for(ORIGIN, key.public_key())
    trees = {a: build_tree(a, h, users) for a, (_, h, users) in HOLDINGS.items()}

    # A log of three epochs over the same trees; the proof is for epoch 1.
    records = [make_record(n, trees) for n in range(3)]
    hashes, note = signed_log([r.header.encode() for r in records])
    size = len(records)
    proof = ProofFile(
        user="alice",
        salt=salt_of("alice"),
        header=records[1].header.encode(),
        assets=alice_paths(records[1], trees),
        inclusion=tuple(rfc9162.inclusion_proof(hashes, 1, size)),
        checkpoint=note,
    )
    verify_proof(proof, vkey, user="alice")  # the valid vector must verify
    a, b = WITNESSES
    cosigned = dataclasses.replace(
        proof, checkpoint=note + cosignatures(note, (a, COSIGNED_AT), (b, COSIGNED_AT + 1))
    )
    public = tuple(witness_key_for(n, k.public_key()) for n, k in witness_keys().items())
    verify_proof(cosigned, vkey, user="alice", witnesses=public, quorum=2, now=NOW)

    record1 = records[1]
    return {
        "key": vkey,
        "witnesses": public,
        "cosigned": cosigned,
        "other_key": verifier_key_for(
            ORIGIN, Ed25519PrivateKey.from_private_bytes(OTHER_SEED).public_key()
        ),
        "record": {
            "hex": record1.encode().hex(),
            "header": record1.header.encode().hex(),
            "entries": [e.hex() for e in record1.entries],
            "asset_map_root": record1.header.asset_map_root.hex(),
            "fields": record_fields(record1),
        },
        "proof": proof,
        "checkpoint": note,
        "records": records,
        "trees": trees,
    }


def alice_paths(
    record: EpochRecord, trees: dict[str, list[list[tuple[bytes, int]]]]
) -> tuple[AssetPath, ...]:
    """Alice's entries of ``record``, each with its map path, slot, balance and tree path."""
    out = []
    for entry in select_entries(record, [a for a, h in HOLDINGS.items() if "alice" in h[2]]):
        asset = record.assets[entry.index].asset
        slot, balance = HOLDINGS[asset][2]["alice"]
        out.append(
            AssetPath(
                entry.entry, entry.index, entry.path, slot, balance, path_of(trees[asset], slot)
            )
        )
    return tuple(out)


def witness_keys() -> dict[str, Ed25519PrivateKey]:
    return {n: Ed25519PrivateKey.from_private_bytes(seed) for n, seed in WITNESSES.items()}


def cosignatures(note: bytes, *stamps: tuple[str, int], body: bytes | None = None) -> bytes:
    """Cosignature lines of the test witnesses named in ``stamps``, each at its
    time, over the body of ``note`` (or over ``body``)."""
    keys = witness_keys()
    body = split_note(note)[0] if body is None else body
    return b"".join(cosign(body, name, keys[name], t) for name, t in stamps)


def record_fields(r: EpochRecord) -> dict[str, Any]:
    return {
        "epoch": r.epoch,
        "timestamp_ms": r.timestamp_ms,
        "max_reserve_age_ms": r.max_reserve_age_ms,
        "assets": [
            {
                "asset": a.asset,
                "decimals": a.decimals,
                "height": a.height,
                "root": a.root.hex(),
                "liabilities": str(a.liabilities),
                "reserves": str(a.reserves),
                "status": a.status.name,
                "sources": [
                    {
                        "name": s.name,
                        "amount": str(s.amount),
                        "as_of_ms": s.as_of_ms,
                        "key_id": f"{s.key_id:08x}",
                        "report_hash": s.report_hash.hex(),
                    }
                    for s in a.sources
                ],
            }
            for a in r.assets
        ],
    }


# 3. Mutated proof files: each changes one thing and must fail with the named check.

Mutation = Callable[[dict[str, Any]], None]


def _set_path_sum(asset: int, step: int, value: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["assets"][asset]["path"][step][1] = value

    return mutate


def _add_path_sum(asset: int, step: int, delta: int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        pair = doc["assets"][asset]["path"][step]
        pair[1] = str(int(pair[1]) + delta)

    return mutate


def _flip_b64_byte(encoded: str, index: int) -> str:
    data = bytearray(base64.b64decode(encoded))
    data[index] ^= 1
    return base64.b64encode(bytes(data)).decode()


def _flip_header_bit(doc: dict[str, Any]) -> None:
    """Flip the lowest bit of the epoch number (byte 12 of the header)."""
    doc["header"] = _flip_b64_byte(doc["header"], 12)


def _flip_entry_bit(doc: dict[str, Any]) -> None:
    """Flip the lowest bit of BTC's liabilities (the last byte of that field)."""
    doc["assets"][0]["entry"] = _flip_b64_byte(doc["assets"][0]["entry"], 4 + 2 + 32 + 15)


def _swap_entries(doc: dict[str, Any]) -> None:
    """BTC's leaf and path under ETH's (authentic) entry."""
    btc, eth = doc["assets"]
    btc.update(entry=eth["entry"], index=eth["index"], map_path=eth["map_path"])


def _flip_hex(s: str) -> str:
    return ("1" if s[0] == "0" else "0") + s[1:]


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _set_pad_bit(encoded: str) -> str:
    """The same bytes in non-canonical base64: the lowest bit of the last data
    character is a pad bit (``encoded`` must end in "=")."""
    assert encoded.endswith("=")
    body = encoded.rstrip("=")
    last = _B64_ALPHABET[_B64_ALPHABET.index(body[-1]) ^ 1]
    assert base64.b64decode(body[:-1] + last + encoded[len(body) :]) == base64.b64decode(encoded)
    return body[:-1] + last + encoded[len(body) :]


def _noncanonical_signature(doc: dict[str, Any]) -> None:
    """The signature line's base64 with a pad bit set: the same signature bytes."""
    body, _, signature = doc["checkpoint"].rstrip("\n").rpartition(" ")
    doc["checkpoint"] = f"{body} {_set_pad_bit(signature)}\n"


MUTATIONS: dict[str, Mutation] = {
    "balance-raised": lambda d: d["assets"][0].update(
        balance=str(int(d["assets"][0]["balance"]) + 1)
    ),
    "balance-lowered": lambda d: d["assets"][0].update(balance="1"),
    "other-user": lambda d: d.update(user="carol"),
    "other-salt": lambda d: d.update(salt=_flip_hex(d["salt"])),
    "other-slot": lambda d: d["assets"][0].update(slot=d["assets"][0]["slot"] ^ 1),
    "slot-beyond-tree": lambda d: d["assets"][0].update(slot=8),
    "entry-swapped": _swap_entries,
    "entry-altered": _flip_entry_bit,
    "entry-index-changed": lambda d: d["assets"][0].update(index=1),
    "entry-index-beyond-map": lambda d: d["assets"][0].update(index=2),
    "map-path-flipped": lambda d: d["assets"][0]["map_path"].__setitem__(
        0, _flip_hex(d["assets"][0]["map_path"][0])
    ),
    "map-path-dropped": lambda d: d["assets"][0]["map_path"].pop(),
    "map-path-extended": lambda d: d["assets"][0]["map_path"].append(d["assets"][0]["map_path"][0]),
    "duplicate-asset": lambda d: d["assets"].append(d["assets"][0]),
    "sibling-hash-flipped": lambda d: d["assets"][0]["path"][1].__setitem__(
        0, _flip_hex(d["assets"][0]["path"][1][0])
    ),
    "sibling-sum-raised": _add_path_sum(0, 2, 1),
    "sibling-sum-hidden": _set_path_sum(0, 2, "0"),
    "sibling-sum-out-of-range": _set_path_sum(0, 0, str(2**64)),
    "sibling-sum-wraps": _add_path_sum(0, 2, 2**128),
    "sibling-sum-negative": _set_path_sum(0, 0, "-1"),
    "path-truncated": lambda d: d["assets"][0]["path"].pop(),
    "path-extended": lambda d: d["assets"][0]["path"].append(d["assets"][0]["path"][-1]),
    "inclusion-flipped": lambda d: d["inclusion"].__setitem__(0, _flip_hex(d["inclusion"][0])),
    "inclusion-dropped": lambda d: d["inclusion"].pop(),
    "header-altered": _flip_header_bit,
    "checkpoint-size-changed": lambda d: d.update(
        checkpoint=d["checkpoint"].replace("\n3\n", "\n4\n", 1)
    ),
    "checkpoint-signature-altered": lambda d: d.update(
        checkpoint=d["checkpoint"][:-6]
        + ("A" if d["checkpoint"][-6] != "A" else "B")
        + d["checkpoint"][-5:]
    ),
    "format-version": lambda d: d.update(format="solvency-proof/3"),
    "format-1": lambda d: d.update(format="solvency-proof/1"),
    "unknown-field": lambda d: d.update(note="trust me"),
    "balance-leading-zero": lambda d: d["assets"][0].update(
        balance="0" + d["assets"][0]["balance"]
    ),
    "hash-truncated": lambda d: d["assets"][0]["path"][0].__setitem__(
        0, d["assets"][0]["path"][0][0][:16]
    ),
    # Values out of range parse, and fail the check of PROTOCOL §3 that bounds them.
    "balance-beyond-u64": lambda d: d["assets"][0].update(balance=str(2**64)),
    "balance-beyond-u128": lambda d: d["assets"][0].update(balance=str(2**128)),
    "balance-40-digits": lambda d: d["assets"][0].update(balance=str(10**39)),
    "slot-beyond-u64": lambda d: d["assets"][0].update(slot=2**64),
    "slot-21-digits": lambda d: d["assets"][0].update(slot=10**20),
    "slot-negative": lambda d: d["assets"][0].update(slot=-1),
    "slot-fraction": lambda d: d["assets"][0].update(slot=float(d["assets"][0]["slot"])),
    "sibling-sum-40-digits": _set_path_sum(0, 0, str(10**39)),
    # JSON and base64 that two parsers could read differently (PROTOCOL §6.1, §6.2).
    "assets-empty": lambda d: d.update(assets=[]),
    "entry-noncanonical-base64": lambda d: d["assets"][0].update(
        entry=_set_pad_bit(d["assets"][0]["entry"])
    ),
    "signature-noncanonical-base64": _noncanonical_signature,
    "checkpoint-lone-surrogate": lambda d: d.update(checkpoint="\ud800" + d["checkpoint"]),
}

TextMutation = Callable[[str], str]

# Mutations of the valid file's text, for what a JSON value cannot express.
TEXT_MUTATIONS: dict[str, TextMutation] = {
    # A parser keeping the last "user" verifies alice; one keeping the first, carol.
    "duplicate-key": lambda t: '{"user":"carol",' + t[1:],
    "byte-order-mark": lambda t: "\ufeff" + t,
}


def signed_mutations(built: dict[str, Any]) -> dict[str, Mutation]:
    """Mutations that need the test key: a log signed over other records or a
    checkpoint body of another shape, each validly signed."""
    records: list[EpochRecord] = built["records"]
    trees = built["trees"]

    def replace_log(log: list[EpochRecord], index: int, body: bytes | None = None) -> Mutation:
        hashes, note = signed_log([r.header.encode() for r in log], body)
        inclusion = [h.hex() for h in rfc9162.inclusion_proof(hashes, index, len(log))]
        proven = json.loads(
            ProofFile(
                "alice",
                bytes(32),
                log[index].header.encode(),
                alice_paths(log[index], trees),
                (),
                b"",
            ).to_json()
        )

        def mutate(doc: dict[str, Any]) -> None:
            doc.update(
                header=proven["header"],
                assets=proven["assets"],
                inclusion=inclusion,
                checkpoint=note.decode(),
            )

        return mutate

    def understated(epoch: int) -> EpochRecord:
        """The record of ``epoch`` stating 1 unit less BTC owed than the tree holds."""
        record = make_record(epoch, trees)
        btc = record.asset("BTC")
        lower = dataclasses.replace(btc, liabilities=btc.liabilities - 1)
        return dataclasses.replace(record, assets=(lower, *record.assets[1:]))

    hashes = [rfc9162.leaf_hash(r.header.encode()) for r in records]
    root = base64.b64encode(rfc9162.root_from_leaf_hashes(hashes)).decode()
    body = f"{ORIGIN}\n{len(records)}\n{root}\n"
    later = make_record(len(records), trees).header.encode()
    return {
        "liabilities-understated": replace_log([understated(n) for n in range(3)], 1),
        "origin-other": replace_log(
            records, 1, body.replace(ORIGIN, "example.com/solvency/other", 1).encode()
        ),
        "checkpoint-extension-line": replace_log(records, 1, (body + "solvent: yes\n").encode()),
        "checkpoint-root-noncanonical-base64": replace_log(
            records, 1, body.replace(root, _set_pad_bit(root)).encode()
        ),
        "record-not-in-log": lambda d: d.update(header=base64.b64encode(later).decode()),
    }


def witness_mutations(built: dict[str, Any]) -> dict[str, Mutation]:
    """Mutations of the cosigned proof's cosignature lines, checked with both
    witnesses configured, a quorum of 2 and the clock at ``NOW`` (PROTOCOL §12.3)."""
    note: bytes = built["checkpoint"]
    a, b = WITNESSES
    record_s = RecordHeader.decode(built["cosigned"].header).timestamp_ms // 1000
    size_2 = Checkpoint(
        ORIGIN,
        2,
        rfc9162.root_from_leaf_hashes(
            [rfc9162.leaf_hash(r.header.encode()) for r in built["records"][:2]]
        ),
    ).to_note_body()

    def lines(*stamps: tuple[str, int], other: tuple[str, int] | None = None) -> Mutation:
        text = (note + cosignatures(note, *stamps)).decode()
        if other is not None:
            text += cosignatures(note, other, body=size_2).decode()
        return lambda d: d.update(checkpoint=text)

    def noncanonical(doc: dict[str, Any]) -> None:
        body, _, last = doc["checkpoint"].rstrip("\n").rpartition(" ")
        doc["checkpoint"] = f"{body} {_set_pad_bit(last)}\n"

    return {
        "witness-quorum-not-met": lines((a, COSIGNED_AT)),
        "witness-cosigned-other-checkpoint": lines((a, COSIGNED_AT), other=(b, COSIGNED_AT)),
        "witness-time-future": lines((a, COSIGNED_AT), (b, NOW + 61)),
        "witness-time-before-record": lines((a, COSIGNED_AT), (b, record_s - 61)),
        "witness-same-twice": lines((a, COSIGNED_AT), (a, COSIGNED_AT + 1)),
        "witness-noncanonical-base64": noncanonical,
    }


# Cases on unmutated files: the verifier is given another key, or told to expect another user.
CALL_CASES: list[dict[str, str]] = [
    {"file": "proof-valid.json", "key": "other-key.txt"},
    {"file": "proof-valid.json", "user": "bob"},
]


def outcome(
    data: bytes,
    key: VerifierKey,
    user: str | None = None,
    witnesses: tuple[WitnessKey, ...] = (),
    quorum: int = 0,
    now: int | None = None,
) -> str:
    """The check a proof file fails (``format`` for a parse error), or ``ok``."""
    try:
        proof = ProofFile.parse(data)
        verify_proof(proof, key, user=user, witnesses=witnesses, quorum=quorum, now=now)
    except VerificationError as exc:
        return exc.check
    except SolvencyError:
        return "format"
    return "ok"


def render() -> dict[str, str]:
    """File name -> contents of every vector file."""
    built = build_all()
    valid = built["proof"].to_json()
    cosigned = built["cosigned"].to_json()
    files = {
        "hashing.json": _dump(hashing_vectors()),
        "record.json": _dump(built["record"]),
        "asset-map.json": _dump(asset_map_vectors()),
        "report.json": _dump(report_vectors()),
        "verifier-key.txt": f"{built['key']}\n",
        "other-key.txt": f"{built['other_key']}\n",
        "checkpoint.txt": built["checkpoint"].decode(),
        "proof-valid.json": valid + "\n",
        "witness-keys.txt": "".join(f"{k}\n" for k in built["witnesses"]),
        "proof-cosigned.json": cosigned + "\n",
    }
    mutated = {}
    for name, mutate in {**MUTATIONS, **signed_mutations(built)}.items():
        doc = json.loads(valid)
        mutate(doc)
        mutated[name] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    for name, edit in TEXT_MUTATIONS.items():
        mutated[name] = edit(valid)
    witnessed = {}
    for name, mutate in witness_mutations(built).items():
        doc = json.loads(cosigned)
        mutate(doc)
        witnessed[name] = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    keys = {"verifier-key.txt": built["key"], "other-key.txt": built["other_key"]}
    witness_files = {"witness-keys.txt": built["witnesses"]}
    cases: list[dict[str, Any]] = [{"file": f"invalid/{name}.json"} for name in mutated]
    cases += CALL_CASES
    cases += [{"file": f"invalid/{name}.json", **WITNESS_CASE} for name in witnessed]
    for name, text in {**mutated, **witnessed}.items():
        files[f"invalid/{name}.json"] = text + "\n"
    manifest: dict[str, Any] = {
        "valid": "proof-valid.json",
        "cosigned": {"file": "proof-cosigned.json", **WITNESS_CASE},
        "invalid": [],
    }
    for case in cases:
        data = files[case["file"]].encode("utf-8")
        expect = outcome(
            data,
            keys[case.get("key", "verifier-key.txt")],
            case.get("user"),
            tuple(k for f in case.get("witnesses", ()) for k in witness_files[f]),
            case.get("quorum", 0),
            case.get("now"),
        )
        if expect == "ok":
            raise SystemExit(f"{case} still verifies: fix the generator")
        manifest["invalid"].append({**case, "expect": expect})
    files["manifest.json"] = _dump(manifest)
    return files


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    files = render()
    stale = []
    for name, text in files.items():
        path, data = OUT / name, text.encode("utf-8")
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    if stale:
        print("stale vectors (run scripts/gen_vectors.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
