"""Subscribers of chosen assets or of checkpoints only (PROTOCOL §11.2), at the
auditor's rules (verifier.audit) and policy (verifier.auditor): what their
frames prove, and each way a prover or a relay could lie in them, built and
shown rejected."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, many
from tests.verifier.witnesses import K1, K2, NOW, witnessed
from verifier.audit import AuditState, EpochAudit, check_epoch
from verifier.auditor import Alarm, Auditor, AuditorConfig, Decision, Frame, RecoveredAsset
from verifier.errors import FormatError, VerificationError
from verifier.record import EpochRecord
from verifier.selection import PartialRecord
from verifier.stream import AssetsMessage, CheckpointMessage, StreamMessage
from verifier.subscription import ALL_ASSETS, Subscription

NAMES = ("ADA", "BTC", "DOGE", "ETH", "SOL")  # indices 0-4 in the asset map
BTC_ETH = Subscription(assets=frozenset({"BTC", "ETH"}))
CHECKPOINTS = Subscription(checkpoints=True)


def five(epochs: int = 3) -> FakeLog:
    log = FakeLog()
    for epoch in range(epochs):
        log.append(many(epoch, NAMES))
    return log


def verify(
    message: StreamMessage, subscription: Subscription, state: AuditState | None = None
) -> PartialRecord:
    audit = check_epoch(state, message, VKEY, ORIGIN, subscription=subscription)
    assert isinstance(audit.record, PartialRecord)
    return audit.record


def indices(frame: AssetsMessage) -> list[int]:
    return [e.index for e in frame.entries]


@pytest.mark.parametrize(
    ("chosen", "sent", "present", "absent"),
    [
        ({"BTC", "ETH"}, [1, 3], ["BTC", "ETH"], []),
        ({"CAT"}, [1, 2], [], ["CAT"]),  # between BTC and DOGE
        ({"AAA"}, [0], [], ["AAA"]),  # before the first
        ({"XRP"}, [4], [], ["XRP"]),  # after the last
        ({"SOL", "ZEC", "BTC"}, [1, 4], ["BTC", "SOL"], ["ZEC"]),
    ],
)
def test_a_frame_of_chosen_assets_proves_them_present_or_absent(
    chosen: set[str], sent: list[int], present: list[str], absent: list[str]
) -> None:
    log = five(1)
    frame = log.assets_frame(0, chosen)
    assert indices(frame) == sent
    record = verify(frame, Subscription(assets=frozenset(chosen)))
    assert [a.asset for a in record.assets] == present and list(record.absent) == absent
    full = EpochRecord.decode(log.messages[0].record)
    assert [record.asset(a) for a in present] == [full.asset(a) for a in present]
    assert record.header.asset_count == 5


def test_an_empty_record_proves_every_chosen_asset_absent() -> None:
    log = FakeLog()
    log.append(many(0, ()))
    frame = log.assets_frame(0, {"BTC"})
    assert frame.entries == ()
    assert verify(frame, Subscription(assets=frozenset({"BTC"}))).absent == ("BTC",)


def _flip(data: bytes, at: int) -> bytes:
    raw = bytearray(data)
    raw[at] ^= 1
    return bytes(raw)


Lie = Callable[[FakeLog], tuple[AssetsMessage, Subscription]]


def _omitted(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """ETH's entry left out: only BTC's is sent."""
    frame = log.assets_frame(2, BTC_ETH.assets or ())
    return dataclasses.replace(frame, entries=frame.entries[:1]), BTC_ETH


def _altered(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """ETH's entry with one byte of its liabilities changed, its path kept."""
    frame = log.assets_frame(2, BTC_ETH.assets or ())
    btc, eth = frame.entries
    lying = dataclasses.replace(eth, entry=_flip(eth.entry, 1 + 3 + 2 + 32 + 15))
    return dataclasses.replace(frame, entries=(btc, lying)), BTC_ETH


def _stale_entry(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """ETH's entry and map path of epoch 1 in the frame of epoch 2."""
    frame = log.assets_frame(2, BTC_ETH.assets or ())
    older = log.assets_frame(1, BTC_ETH.assets or ())
    return dataclasses.replace(frame, entries=(frame.entries[0], older.entries[1])), BTC_ETH


def _moved(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """ETH's entry and path sent at another index."""
    frame = log.assets_frame(2, {"ETH"})
    [eth] = frame.entries
    return dataclasses.replace(frame, entries=(dataclasses.replace(eth, index=2),)), Subscription(
        assets=frozenset({"ETH"})
    )


def _hidden_by_neighbours(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """ETH (index 3) claimed absent with DOGE (2) and SOL (4), which are not adjacent."""
    around = log.assets_frame(2, {"DOGE", "SOL"})
    assert indices(around) == [2, 4]
    return around, Subscription(assets=frozenset({"ETH"}))


def _gap_in_absence(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """CAT (between BTC and DOGE) claimed absent with ADA and DOGE: BTC is left out."""
    around = log.assets_frame(2, {"ADA", "DOGE"})
    return around, Subscription(assets=frozenset({"CAT"}))


def _one_side(log: FakeLog) -> tuple[AssetsMessage, Subscription]:
    """CAT claimed absent with BTC alone: nothing shows that DOGE is next."""
    frame = log.assets_frame(2, {"CAT"})
    return dataclasses.replace(frame, entries=frame.entries[:1]), Subscription(
        assets=frozenset({"CAT"})
    )


LIES: dict[str, tuple[Lie, str]] = {
    "omitted": (_omitted, "asset-map-incomplete"),
    "altered": (_altered, "asset-map-mismatch"),
    "stale-entry": (_stale_entry, "asset-map-mismatch"),
    "moved": (_moved, "asset-map-mismatch"),
    "hidden-by-neighbours": (_hidden_by_neighbours, "asset-map-incomplete"),
    "gap-in-absence": (_gap_in_absence, "asset-map-incomplete"),
    "one-side": (_one_side, "asset-map-incomplete"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lie_in_a_frame_of_chosen_assets_is_caught(lie: str) -> None:
    make, check = LIES[lie]
    log = five()
    state = check_epoch(None, log.messages[1], VKEY, ORIGIN).state
    frame, subscription = make(log)
    with pytest.raises(VerificationError) as info:
        check_epoch(state, frame, VKEY, ORIGIN, subscription=subscription)
    assert info.value.check == check
    # the honest frame of the same epoch verifies
    honest = log.assets_frame(2, subscription.assets or ())
    check_epoch(state, honest, VKEY, ORIGIN, subscription=subscription)


def test_an_altered_header_fails_the_inclusion_proof() -> None:
    log = five()
    frame = log.assets_frame(2, {"BTC"})
    forged = dataclasses.replace(frame, header=_flip(frame.header, 20))  # its timestamp
    with pytest.raises(VerificationError, match="inclusion"):
        check_epoch(None, forged, VKEY, ORIGIN, subscription=Subscription(frozenset({"BTC"})))


@pytest.mark.parametrize(
    ("kind", "subscription"),
    [
        ("checkpoint", ALL_ASSETS),  # a frame without the record, to a subscriber of all
        ("assets", ALL_ASSETS),  # some entries, to a subscriber of all
        ("full", BTC_ETH),  # a whole record would not be checked to hold them
        ("full", CHECKPOINTS),
        ("assets", CHECKPOINTS),
        ("checkpoint", BTC_ETH),
    ],
)
def test_a_frame_of_another_kind_is_malformed(kind: str, subscription: Subscription) -> None:
    log = five(1)
    frames: dict[str, StreamMessage] = {
        "full": log.messages[0],
        "assets": log.assets_frame(0, {"BTC", "ETH"}),
        "checkpoint": log.checkpoint_frame(0),
    }
    with pytest.raises(FormatError):
        check_epoch(None, frames[kind], VKEY, ORIGIN, subscription=subscription)
    a = Auditor(AuditorConfig(key=VKEY, origin=ORIGIN, subscription=subscription), None, 0.0)
    alarm, _ = a.handle(Frame(frames[kind].to_json(), 1.0))
    assert isinstance(alarm, Alarm) and alarm.check == "format" and a.state is None


def kinds(decisions: list[Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def test_a_chosen_asset_dropped_from_the_record_alarms_then_recovers() -> None:
    """ETH is left out of epochs 1 and 2: an ``absent`` alarm when it goes,
    with the entries that prove it in the evidence, none again while it stays
    out, and a recovery when it is back."""
    log = FakeLog()
    for epoch, names in enumerate((NAMES, ("ADA", "BTC", "DOGE", "SOL"), ("BTC",), NAMES)):
        log.append(many(epoch, names))
    config = AuditorConfig(key=VKEY, origin=ORIGIN, subscription=BTC_ETH, keep_going=True)
    a = Auditor(config, None, 0.0)
    outs = [a.handle(Frame(log.assets_frame(e, {"BTC", "ETH"}).to_json(), 1.0)) for e in range(4)]
    assert [kinds(o) for o in outs] == [
        ["SaveState", "Verified"],
        ["SaveState", "Verified", "Alarm"],
        ["SaveState", "Verified"],
        ["SaveState", "Verified", "RecoveredAsset"],
    ]
    alarm = outs[1][2]
    assert isinstance(alarm, Alarm) and alarm.check == "absent"
    assert alarm.reason == "ETH: the record has no entry for it"
    sent = alarm.evidence["message"]
    assert sent["type"] == "epoch-assets" and [e["index"] for e in sent["entries"]] == [1, 2, 3]
    # the epoch verified: its own checkpoint, with the entries, is the evidence
    assert alarm.evidence["last_verified_checkpoint"] == log.messages[1].checkpoint.decode()
    assert outs[1][1].status("ETH") == "absent"  # type: ignore[union-attr]
    assert outs[3][2] == RecoveredAsset("ETH", 3)
    stopping = Auditor(dataclasses.replace(config, keep_going=False), None, 0.0)
    stopping.handle(Frame(log.assets_frame(0, {"BTC", "ETH"}).to_json(), 1.0))
    assert kinds(stopping.handle(Frame(log.assets_frame(1, {"BTC", "ETH"}).to_json(), 1.0))) == [
        "SaveState",
        "Verified",
        "Alarm",
        "Stop",
    ]


def test_checkpoints_only_follow_the_log_and_catch_a_fork() -> None:
    log, twin = five(4), FakeLog()
    for epoch in range(4):
        twin.append(many(epoch, NAMES if epoch < 2 else ("BTC",)))
    state = None
    for epoch in range(3):
        audit = check_epoch(
            state, log.checkpoint_frame(epoch), VKEY, ORIGIN, subscription=CHECKPOINTS
        )
        assert audit.record is None and audit.findings == () and audit.epoch == epoch
        state = audit.state
    assert state is not None and state.size == 3
    for frame, check in (
        (twin.checkpoint_frame(3), "fork"),
        (log.checkpoint_frame(1), "replayed-checkpoint"),
        (twin.checkpoint_frame(2), "fork"),
    ):
        with pytest.raises(VerificationError) as info:
            check_epoch(state, frame, VKEY, ORIGIN, subscription=CHECKPOINTS)
        assert info.value.check == check
    skipped = FakeLog()
    for epoch in range(5):
        skipped.append(many(epoch, NAMES))
    with pytest.raises(VerificationError, match="epoch-gap"):
        check_epoch(state, skipped.checkpoint_frame(4), VKEY, ORIGIN, subscription=CHECKPOINTS)


def test_checkpoints_only_check_the_witnesses() -> None:
    log = five(2)
    cosigned = witnessed(log.messages[0], K1.name, K2.name)
    lacking = witnessed(log.messages[1], K1.name)

    def check(state: AuditState | None, note: bytes, consistency: tuple[bytes, ...]) -> EpochAudit:
        frame = CheckpointMessage(note, consistency)
        return check_epoch(
            state,
            frame,
            VKEY,
            ORIGIN,
            witnesses=(K1, K2),
            quorum=2,
            now=NOW,
            subscription=CHECKPOINTS,
        )

    first = check(None, cosigned.checkpoint, ())
    assert first.witness_failure is None and len(first.cosignatures) == 2
    second = check(first.state, lacking.checkpoint, log.checkpoint_frame(1).consistency)
    assert second.witness_failure is not None
    assert second.witness_failure.check == "witness-quorum"
