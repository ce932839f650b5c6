"""Sum tree hashers keyed by record version (docs/PROTOCOL.md §2, §10): the
lookup, the current version's SHA-256 rules, and their use by records, paths
and proofs."""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.verifier.fakelog import VKEY, FakeLog
from verifier import hashing
from verifier.errors import FormatError, VerificationError
from verifier.hashing import (
    HASHER,
    SHA256_HASHER,
    VERSION,
    SumTreeHasher,
    hasher_for,
)
from verifier.proof import AssetPath, ProofFile, verify_proof
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.sumtree import PathStep, root_from_path, verify_path

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "hashing.json").read_text())

# Another hasher: another digest function and other tags than version 2's.
OTHER = SumTreeHasher(hashlib.sha3_256, 0x63, 0x6C, 0x70, 0x6E, 0x65, 0x6D)


def compute(hasher: SumTreeHasher, name: str, i: dict[str, str]) -> bytes:
    if name == "commitment":
        return hasher.commitment(i["user"], bytes.fromhex(i["salt"]))
    if name == "leaf":
        return hasher.leaf_hash(i["asset"], bytes.fromhex(i["commitment"]), int(i["amount"]))
    if name == "padding":
        return hasher.padding_hash(i["asset"], bytes.fromhex(i["padding_key"]), int(i["slot"]))
    if name == "asset-map-entry":
        return hasher.entry_hash(bytes.fromhex(i["entry"]))
    if name == "asset-map-node":
        return hasher.map_node_hash(bytes.fromhex(i["left"]), bytes.fromhex(i["right"]))
    if name == "asset-map-empty":
        return hasher.empty_map()
    assert name == "node"
    return hasher.node_hash(
        bytes.fromhex(i["left"]), int(i["left_sum"]), bytes.fromhex(i["right"]), int(i["right_sum"])
    )


def tag_of(hasher: SumTreeHasher, name: str) -> int:
    return {
        "commitment": hasher.commitment_tag,
        "leaf": hasher.leaf_tag,
        "padding": hasher.padding_tag,
        "node": hasher.node_tag,
        "asset-map-entry": hasher.entry_tag,
        "asset-map-node": hasher.map_node_tag,
        "asset-map-empty": hasher.map_node_tag,
    }[name]


# The lookup


def test_the_current_version_is_read_with_sha256() -> None:
    assert VERSION == 2
    assert hasher_for(VERSION) is SHA256_HASHER is HASHER
    assert SHA256_HASHER.digest is hashlib.sha256
    tags = (0x43, 0x4C, 0x50, 0x4E, 0x45, 0x4D)
    names = ("commitment", "leaf", "padding", "node", "asset-map-entry", "asset-map-node")
    assert tags == tuple(tag_of(HASHER, n) for n in names)


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_an_unknown_version_is_refused_by_name(version: int) -> None:
    message = f"unsupported epoch record version {version}: this verifier reads version 2"
    with pytest.raises(FormatError, match=f"^{re.escape(message)}$"):
        hasher_for(version)


def test_the_refusal_lists_every_version_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "_HASHERS", {3: OTHER, 2: HASHER})
    assert hasher_for(3) is OTHER
    with pytest.raises(FormatError, match=r"version 4: this verifier reads versions 2, 3$"):
        hasher_for(4)


# The current hasher against the known answers


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_the_current_hasher_gives_the_known_answers(case: dict) -> None:
    hasher = hasher_for(VERSION)
    message = bytes.fromhex(case["message"])
    assert message[0] == tag_of(hasher, case["name"])
    assert hasher.digest(message).digest().hex() == case["digest"]
    assert compute(hasher, case["name"], case["inputs"]).hex() == case["digest"]


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_every_rule_takes_the_hashers_digest_and_tag(case: dict) -> None:
    """The same layout under another digest function and other tags."""
    message = bytes.fromhex(case["message"])
    retagged = bytes((tag_of(OTHER, case["name"]),)) + message[1:]
    got = compute(OTHER, case["name"], case["inputs"])
    assert got == hashlib.sha3_256(retagged).digest() != bytes.fromhex(case["digest"])
    digest_only = dataclasses.replace(HASHER, digest=hashlib.sha3_256)
    assert compute(digest_only, case["name"], case["inputs"]) == hashlib.sha3_256(message).digest()


def test_prefixes_carry_the_tags() -> None:
    assert OTHER.leaf_prefix("BTC") == b"\x6c\x03BTC"
    assert OTHER.padding_prefix("BTC") == b"\x70\x03BTC"
    with pytest.raises(FormatError, match="invalid asset id"):
        OTHER.leaf_prefix("btc")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digest": hashlib.sha512}, "a digest of 64 bytes: the wire format holds 32"),
        ({"digest": hashlib.sha1}, "a digest of 20 bytes"),
        ({"node_tag": 0x4C}, "six distinct bytes"),
        ({"map_node_tag": 0x4E}, "six distinct bytes"),
        ({"leaf_tag": 0x00}, "none 0x00 or 0x01"),
        ({"padding_tag": 0x01}, "none 0x00 or 0x01"),
        ({"commitment_tag": 0x100}, "0x100"),
    ],
)
def test_a_hasher_keeps_its_invariants(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(HASHER, **kwargs)


# Paths, records and proofs take the record version's hasher


def two_leaves(hasher: SumTreeHasher, amount: int) -> tuple[bytes, PathStep, bytes, int]:
    """A tree of height 1: alice's leaf at slot 0, padding at slot 1."""
    leaf = hasher.leaf_hash("BTC", hasher.commitment("alice", bytes(32)), amount)
    padding = PathStep(hasher.padding_hash("BTC", bytes(range(32)), 1), 0)
    return leaf, padding, hasher.node_hash(leaf, amount, padding.hash, 0), amount


def test_a_path_is_checked_with_the_given_hasher() -> None:
    leaf, step, root, total = two_leaves(OTHER, 5)
    assert root_from_path(1, 0, leaf, 5, [step], hasher=OTHER) == (root, total)
    assert root_from_path(1, 0, leaf, 5, [step])[0] != root  # the current hasher's
    args = {"height": 1, "root": root, "liabilities": 5, "slot": 0, "leaf": leaf, "amount": 5}
    verify_path(**args, path=[step], hasher=OTHER)
    with pytest.raises(VerificationError, match="root-mismatch"):
        verify_path(**args, path=[step])


def record(version: int, root: bytes, total: int) -> EpochRecord:
    timestamp = 1_790_000_000_000
    sources = (ReserveSource("cold", total, timestamp - 500),)
    asset = AssetState("BTC", 8, 1, root, total, total, Status.SOLVENT, sources)
    return EpochRecord(0, timestamp, 60_000, (asset,), version)


def test_a_record_keeps_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    data = record(VERSION, bytes(32), 5).encode()
    assert data[4] == VERSION and EpochRecord.decode(data).version == VERSION
    with pytest.raises(FormatError, match="unsupported epoch record version 3: this verifier"):
        record(3, bytes(32), 5)
    with pytest.raises(FormatError, match="unsupported epoch record version 3: this verifier"):
        EpochRecord.decode(data[:4] + b"\x03" + data[5:])
    monkeypatch.setattr(hashing, "_HASHERS", {2: HASHER, 3: OTHER})
    three = record(3, bytes(32), 5)
    assert three.encode()[4] == 3
    assert EpochRecord.decode(three.encode()) == three != record(2, bytes(32), 5)


def proof_of(version: int, hasher: SumTreeHasher) -> ProofFile:
    """alice's proof in a log of one record of ``version`` over a tree ``hasher`` built."""
    _, step, root, total = two_leaves(hasher, 5)
    full = record(version, root, total)
    message = FakeLog().append(full.encode())
    return ProofFile(
        user="alice",
        salt=bytes(32),
        header=full.header.encode(),
        assets=(AssetPath(full.entries[0], 0, (), 0, 5, (step,)),),
        inclusion=message.inclusion,
        checkpoint=message.checkpoint,
    )


def test_a_proof_is_checked_with_its_records_hasher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "_HASHERS", {2: HASHER, 3: OTHER})
    for version, hasher in [(2, HASHER), (3, OTHER)]:
        report = verify_proof(proof_of(version, hasher), VKEY, user="alice")
        assert report.record.version == version and report.assets[0].balance == 5
    for version, hasher in [(2, OTHER), (3, HASHER)]:
        with pytest.raises(VerificationError, match="root-mismatch"):
            verify_proof(proof_of(version, hasher), VKEY, user="alice")
