"""One epoch's frames, pure (prover/frames.py): the first and later variants'
reports, both encodings, the checkpoint frame's consistency proof, each frame
built once per (subscription, encoding, variant), all verified as a
subscriber verifies them, over a chain of records and a log made here."""

from __future__ import annotations

import pytest

from prover.epoch import Reserve, build_record, record_reports
from prover.frames import Encoding, EpochFrames, Frame
from prover.ledger import AssetRoot
from prover.mapped import MappedRecord
from tests.prover.test_engine import KEY, ORIGIN
from tests.prover.test_reserve_reports import COLD_VKEY, note
from verifier import rfc9162
from verifier.audit import AuditState, check_epoch
from verifier.auditor import Alarm, Auditor, AuditorConfig, Verified
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.report import SignedReport
from verifier.stream import CheckpointMessage, EpochMessage, StreamMessage, parse_message
from verifier.stream_binary import parse_msgpack
from verifier.subscription import ALL_ASSETS, Subscription

VKEY = verifier_key_for(ORIGIN, KEY.public_key())
CHECKPOINTS = Subscription(checkpoints=True)
NOW = 1_790_000_000_000
ASSETS = ("BTC", "ETH", "SOL")


def chosen(*assets: str) -> Subscription:
    return Subscription(assets=frozenset(assets))


def reserve(asset: str, amount: int) -> Reserve:
    text = note(amount, NOW, asset=asset).encode()
    signed = SignedReport.parse(text)
    return Reserve(amount, NOW, COLD_VKEY.key_id, signed.hash, text)


class Chain:
    """Records of epochs 0, 1, … with the reserves given for each, appended
    to a log whose checkpoints KEY signs: each epoch's message as published
    (every report its record binds) and its record."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self.epochs: list[tuple[EpochMessage, MappedRecord]] = []

    def add(self, reserves: dict[str, Reserve]) -> tuple[EpochMessage, MappedRecord]:
        number = len(self.epochs)
        record = build_record(
            epoch=number,
            timestamp_ms=NOW + number,
            max_reserve_age_ms=60_000,
            decimals=dict.fromkeys(ASSETS, 8),
            roots=[AssetRoot(a, 4, bytes([i]) * 32, 0) for i, a in enumerate(ASSETS)],
            reserves={a: {"cold": r} for a, r in reserves.items()},
        )
        self.leaves.append(rfc9162.leaf_hash(record.header.encode()))
        size = number + 1
        body = Checkpoint(ORIGIN, size, rfc9162.root_from_leaf_hashes(self.leaves)).to_note_body()
        message = EpochMessage(
            record=record.encode(),
            checkpoint=sign_note(body, ORIGIN, KEY),
            inclusion=tuple(rfc9162.inclusion_proof(self.leaves, number, size)),
            reports=record_reports(record, {a: {"cold": r} for a, r in reserves.items()}),
        )
        self.epochs.append((message, MappedRecord(record)))
        return self.epochs[-1]

    def frames(self, number: int, previous: bool = True) -> EpochFrames:
        message, mapped = self.epochs[number]
        before = self.epochs[number - 1][1] if previous and number else None
        return EpochFrames(message, mapped, before)


BTC1, BTC2, ETH1, SOL1 = (
    reserve("BTC", 50),
    reserve("BTC", 60),
    reserve("ETH", 70),
    reserve("SOL", 9),
)


def parsed(frame: Frame) -> StreamMessage:
    return parse_message(frame) if isinstance(frame, str) else parse_msgpack(frame)


def test_later_frames_carry_only_what_the_previous_record_did_not_bind() -> None:
    chain = Chain()
    chain.add({"BTC": BTC1, "ETH": ETH1})
    chain.add({"BTC": BTC2, "ETH": ETH1, "SOL": SOL1})  # BTC's report replaced, SOL's new
    frames = chain.frames(1)
    cases = [
        (ALL_ASSETS, [BTC2, ETH1, SOL1], [BTC2, SOL1]),
        (chosen("ETH"), [ETH1], []),
        (chosen("ETH", "SOL"), [ETH1, SOL1], [SOL1]),
        (chosen("DOGE"), [], []),  # BTC and ETH are its neighbours: their reports are not sent
        (CHECKPOINTS, [], []),
    ]
    for subscription, first, later in cases:
        for encoding in Encoding:
            for variant, want in ((True, first), (False, later)):
                message = parsed(frames.frame(subscription, encoding, variant))
                carried = () if isinstance(message, CheckpointMessage) else message.reports
                assert carried == tuple(r.note for r in want), (subscription, encoding, variant)
    # without the record before, a later frame carries every report, as a first one
    alone = chain.frames(1, previous=False)
    assert alone.frame(ALL_ASSETS, first=False) == alone.frame(ALL_ASSETS, first=True)


def test_frames_of_a_chain_verify_and_the_auditor_keeps_the_reports_bound() -> None:
    """A connection's first frame, then later ones, of every subscription and
    encoding: each verifies after the one before; the auditor, from the
    reports of the first and the new ones of each later frame, holds every
    report each record binds, and finds every asset attested."""
    chain = Chain()
    plan = [
        {"BTC": BTC1},
        {"BTC": BTC1, "ETH": ETH1},
        {"BTC": BTC1, "ETH": ETH1},
        {"BTC": BTC2, "ETH": ETH1, "SOL": SOL1},
        {"BTC": BTC2, "SOL": SOL1},  # ETH's source gone
        {"BTC": BTC2, "ETH": ETH1, "SOL": SOL1},  # and back: its report is new again
    ]
    for reserves in plan:
        chain.add(reserves)
    for subscription in (ALL_ASSETS, chosen("BTC", "ETH"), chosen("SOL"), CHECKPOINTS):
        config = AuditorConfig(VKEY, ORIGIN, attesters=(COLD_VKEY,), subscription=subscription)
        for encoding in Encoding:
            for start in range(len(plan)):
                auditor = Auditor(config, None, 0.0)
                for number in range(start, len(plan)):
                    frame = chain.frames(number).frame(subscription, encoding, number == start)
                    decisions = auditor.on_message(parsed(frame), float(number))
                    assert not [d for d in decisions if isinstance(d, Alarm)], decisions
                    [verified] = [d for d in decisions if isinstance(d, Verified)]
                    assert verified.statuses == {}
                    assert list(verified.reports) == bound(chain, number, subscription)


def bound(chain: Chain, number: int, subscription: Subscription) -> list[bytes]:
    """The signed reports epoch ``number``'s record binds for the assets of
    ``subscription``, in record order."""
    if subscription.checkpoints:
        return []
    wanted = subscription.assets
    notes = chain.epochs[number][0].reports
    return [r for r in notes if wanted is None or SignedReport.parse(r).report.asset in wanted]


def test_a_later_frame_alone_is_caught_unattested() -> None:
    """The attack the first variant prevents: a connection whose first frame
    lacked the reports its record binds (a later frame sent first) leaves the
    auditor without them, and it alarms ``unattested``."""
    chain = Chain()
    chain.add({"BTC": BTC1})
    chain.add({"BTC": BTC1})
    auditor = Auditor(AuditorConfig(VKEY, ORIGIN, attesters=(COLD_VKEY,)), None, 0.0)
    later = parse_message(chain.frames(1).frame(ALL_ASSETS, first=False))
    decisions = auditor.on_message(later, 0.0)
    assert [d.check for d in decisions if isinstance(d, Alarm)] == ["unattested"]


def test_checkpoint_frames_prove_consistency_from_the_log_one_shorter() -> None:
    chain = Chain()
    for _ in range(9):
        chain.add({"BTC": BTC1})
    for number in range(9):
        for encoding in Encoding:
            message = parsed(chain.frames(number).frame(CHECKPOINTS, encoding))
            assert isinstance(message, CheckpointMessage)
            old = rfc9162.root_from_leaf_hashes(chain.leaves[:number])
            new = rfc9162.root_from_leaf_hashes(chain.leaves[: number + 1])
            rfc9162.verify_consistency(number, number + 1, old, new, message.consistency)
            assert list(message.consistency) == rfc9162.consistency_proof(
                chain.leaves, number, number + 1
            )
    state: AuditState | None = None
    for number in range(9):
        frame = chain.frames(number).frame(CHECKPOINTS)
        state = check_epoch(
            state, parse_message(frame), VKEY, ORIGIN, subscription=CHECKPOINTS
        ).state


@pytest.mark.parametrize("bound", [True, False])
def test_each_frame_is_built_once_per_subscription_encoding_and_variant(
    monkeypatch: pytest.MonkeyPatch, bound: bool
) -> None:
    """Asked many times, each (subscription, encoding, variant) is built once;
    the variants share one build when they carry the same reports (a
    checkpoint frame always, a record frame when none is bound)."""
    builds: list[tuple[Subscription, Encoding, bool]] = []
    build = EpochFrames._build

    def counted(
        self: EpochFrames, subscription: Subscription, encoding: Encoding, first: bool
    ) -> Frame:
        builds.append((subscription, encoding, first))
        return build(self, subscription, encoding, first)

    monkeypatch.setattr(EpochFrames, "_build", counted)
    chain = Chain()
    chain.add({"BTC": BTC1} if bound else {})
    chain.add({"BTC": BTC1} if bound else {})
    frames = chain.frames(1)
    kinds = [ALL_ASSETS, chosen("BTC"), chosen("ETH", "BTC"), CHECKPOINTS]
    for _ in range(3):
        for subscription in kinds:
            for encoding in Encoding:
                for first in (True, False):
                    frames.frame(subscription, encoding, first)
    shared = {CHECKPOINTS} if bound else set(kinds)  # the variants carry the same reports
    expected = {
        (s, e, f)
        for s in kinds
        for e in Encoding
        for f in ((True,) if s in shared else (True, False))
    }
    assert sorted(builds, key=repr) == sorted(expected, key=repr)
    # shared variants are the same object
    for s in kinds:
        for e in Encoding:
            a, b = frames.frame(s, e, True), frames.frame(s, e, False)
            assert (a is b) == (s in shared)
