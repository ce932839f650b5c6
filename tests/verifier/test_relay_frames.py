"""The frames a relay builds (verifier.relay_frames), without sockets: for
subscribers of chosen assets or of checkpoints, a connection's first frame,
frames in the other encoding; what the prover would send, built once per
epoch and kind, and verified by the subscriber as the prover's."""

from __future__ import annotations

import dataclasses

import pytest

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, asset, many
from tests.verifier.test_watch_attested import COLD, COLD_VKEY, T0
from verifier import relay_frames
from verifier.assetmap import AssetMap
from verifier.audit import AuditState, check_epoch
from verifier.auditor import Auditor, AuditorConfig, Frame, Verified
from verifier.record import AssetState, EpochRecord, ReserveSource
from verifier.relay_frames import Builder
from verifier.relay_history import History, Relayed
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.selection import PartialRecord
from verifier.stream import AssetsMessage, EpochMessage, parse_message
from verifier.stream_binary import parse_msgpack, to_msgpack
from verifier.subscription import ALL_ASSETS, Subscription

NAMES = ("ADA", "BTC", "DOGE", "ETH", "SOL")
BTC_ETH = Subscription(assets=frozenset({"BTC", "ETH"}))
CHECKPOINTS = Subscription(checkpoints=True)


def relayed(
    messages: list[EpochMessage], capacity: int = 10, msgpack: bool = False
) -> tuple[History, Builder]:
    """A relay's history and builder after verifying ``messages`` from epoch 0
    (in MessagePack if ``msgpack``), as ``verifier.relay`` keeps them."""
    history = History(capacity, 0)
    builder = Builder(history)
    auditor = Auditor(AuditorConfig(VKEY, ORIGIN, keep_going=True), None, 0.0)
    for epoch, message in enumerate(messages):
        payload = to_msgpack(message) if msgpack else message.to_json().encode()
        [verified] = [
            d for d in auditor.handle(Frame(payload, 0.0, msgpack)) if isinstance(d, Verified)
        ]
        assert isinstance(verified.audit.record, EpochRecord)
        received = Relayed(epoch, payload, not msgpack, msgpack, verified.reports)
        builder.append(received, verified.audit.record)
    return history, builder


def five(epochs: int) -> FakeLog:
    log = FakeLog()
    for epoch in range(epochs):
        log.append(many(epoch, NAMES))
    return log


def test_built_frames_are_the_provers_and_verify() -> None:
    log = five(3)
    history, builder = relayed(log.messages)
    state: AuditState | None = None
    for epoch in range(3):
        frame = builder.frame(epoch, BTC_ETH)
        assert frame is not None and frame.text and frame.epoch == epoch
        assert frame.payload == log.assets_frame(epoch, {"BTC", "ETH"}).to_json().encode()
        audit = check_epoch(state, parse_message(frame.payload), VKEY, ORIGIN, subscription=BTC_ETH)
        assert isinstance(audit.record, PartialRecord)
        assert [a.asset for a in audit.record.assets] == ["BTC", "ETH"]
        state = audit.state
        checkpoint = builder.frame(epoch, CHECKPOINTS)  # its consistency from the inclusion path
        assert checkpoint is not None
        assert checkpoint.payload == log.checkpoint_frame(epoch).to_json().encode()
        assert builder.frame(epoch, CHECKPOINTS, first=True) is checkpoint
    # every asset: the upstream frame itself, byte for byte; no report: a first frame too
    assert builder.frame(1, ALL_ASSETS) is history.get(1)
    assert builder.frame(1, ALL_ASSETS, first=True) is history.get(1)
    assert builder.frame(3, BTC_ETH) is None  # not verified yet


def test_a_frame_is_built_once_per_epoch_and_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many subscribers ask, live or replaying; the asset map of an
    epoch is built once for all its choices."""
    maps: list[int] = []

    class CountingMap(AssetMap):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            maps.append(self.size)

    monkeypatch.setattr(relay_frames, "AssetMap", CountingMap)
    log = five(4)
    _, builder = relayed(log.messages)
    choices = [BTC_ETH, Subscription(assets=frozenset({"CAT"})), CHECKPOINTS]
    for _subscriber in range(50):
        for epoch in range(4):
            for choice in choices:
                for msgpack in (False, True):
                    for first in (False, True):
                        builder.frame(epoch, choice, msgpack=msgpack, first=first)
    assert builder.built == 4 * 3 * 2  # each encoding; first and later carry no report here
    assert maps == [5] * 4  # checkpoints need none
    same = [builder.frame(2, Subscription(assets=frozenset({"ETH", "BTC"}))) for _ in range(3)]
    assert same[0] is same[1] is same[2] and builder.built == 24


def test_the_live_epoch_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    log = five(1)
    builder = Builder(History(10, 0))
    frame = Relayed(0, log.messages[0].to_json().encode())
    builder.append(frame, EpochRecord.decode(log.messages[0].record))

    def refuse(data: bytes) -> EpochRecord:
        raise AssertionError("decoded again")

    monkeypatch.setattr(relay_frames.EpochRecord, "decode", refuse)
    assert builder.frame(0, BTC_ETH) is not None


def test_built_frames_are_kept_within_the_budget() -> None:
    log = five(6)
    history, _ = relayed(log.messages)
    last = sum(len(log.assets_frame(e, {"BTC", "ETH"}).to_json()) for e in (3, 4, 5))
    builder = Builder(history, budget=last)
    for epoch in range(6):
        builder.frame(epoch, BTC_ETH)
    assert builder.built == 6 and len(builder) == 3
    for epoch in (3, 4, 5):  # the last 3 are kept
        builder.frame(epoch, BTC_ETH)
    assert builder.built == 6
    builder.frame(0, BTC_ETH)  # gone: built again
    assert builder.built == 7


def test_an_epoch_that_left_the_history_is_not_built() -> None:
    log = five(5)
    history, builder = relayed(log.messages, capacity=2)
    assert history.first == 3
    assert builder.frame(2, BTC_ETH) is None and builder.built == 0
    assert builder.frame(3, BTC_ETH) is not None


def _attested(name: str, epoch: int, note: bytes) -> AssetState:
    signed = SignedReport.parse(note)
    r = signed.report
    source = ReserveSource("cold", r.amount, r.as_of_ms, signed.key_id, signed.hash)
    return dataclasses.replace(asset(name, epoch), reserves=r.amount, sources=(source,))


def _note(name: str, epoch: int) -> bytes:
    return sign_report(ReserveReport("cold", name, 150, T0 + epoch * 1000 - 500), COLD)


def test_a_built_frame_carries_the_chosen_assets_reports_only() -> None:
    """The reports of the chosen assets' attested sources, in record order, not
    those of the neighbours sent to prove an absence; with them the
    subscriber's --attester check passes."""
    reports = {name: _note(name, 0) for name in ("BTC", "DOGE", "ETH")}
    assets = [_attested(n, 0, reports[n]) if n in reports else asset(n, 0) for n in NAMES]
    log = FakeLog()
    log.append(EpochRecord(0, T0, 60_000, tuple(assets)).encode(), tuple(reports.values()))
    _, builder = relayed(log.messages)
    for chosen, want in (({"ETH", "BTC"}, ["BTC", "ETH"]), ({"CAT"}, []), ({"SOL"}, [])):
        frame = builder.frame(0, Subscription(assets=frozenset(chosen)))
        assert frame is not None
        message = parse_message(frame.payload)
        assert isinstance(message, AssetsMessage)
        assert message.reports == tuple(reports[n] for n in want)


def _rotating() -> tuple[FakeLog, list[dict[str, bytes]]]:
    """Epochs 0-3 of ADA, BTC, ETH, each attested: ADA's and BTC's reports
    unchanged throughout, ETH's new at epoch 2. Each frame carries what the
    prover sends on one connection from epoch 0: all, then the new ones."""
    bound = [
        {"ADA": _note("ADA", 0), "BTC": _note("BTC", 0), "ETH": _note("ETH", 2 if e >= 2 else 0)}
        for e in range(4)
    ]
    log = FakeLog()
    for epoch, notes in enumerate(bound):
        assets = [
            _attested(n, epoch, notes[n]) if n in notes else asset(n, epoch)
            for n in ("ADA", "BTC", "ETH")
        ]
        sent = tuple(notes.values()) if epoch == 0 else ((notes["ETH"],) if epoch == 2 else ())
        log.append(EpochRecord(epoch, T0 + epoch * 1000, 60_000, tuple(assets)).encode(), sent)
    return log, bound


def _reports(frame: Relayed | None) -> tuple[bytes, ...]:
    assert frame is not None
    message = parse_msgpack(frame.payload) if frame.msgpack else parse_message(frame.payload)
    assert not isinstance(message, relay_frames.CheckpointMessage)
    return message.reports


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
def test_a_first_frame_carries_every_report_a_later_one_the_new_ones(msgpack: bool) -> None:
    """A connection's first frame carries the report of every attested source
    of its entries; a later one those bound anew since the epoch before. A
    subscriber joining at any epoch verifies every report with --attester."""
    log, bound = _rotating()
    history, builder = relayed(log.messages)
    btc, eth = Subscription(assets=frozenset({"BTC"})), Subscription(assets=frozenset({"ETH"}))
    for epoch in range(4):
        notes = bound[epoch]
        first = builder.frame(epoch, ALL_ASSETS, msgpack=msgpack, first=True)
        assert _reports(first) == (notes["ADA"], notes["BTC"], notes["ETH"])
        assert _reports(builder.frame(epoch, BTC_ETH, msgpack=msgpack, first=True)) == (
            notes["BTC"],
            notes["ETH"],
        )
        assert _reports(builder.frame(epoch, btc, msgpack=msgpack, first=True)) == (notes["BTC"],)
        # a later frame: the new ones (epoch 0: none known before it, all)
        new = (notes["ETH"],) if epoch == 2 else ()
        later = builder.frame(epoch, ALL_ASSETS, msgpack=msgpack)
        assert _reports(later) == (log.messages[epoch].reports)
        if not msgpack:
            assert later is history.get(epoch)  # the upstream frame itself
        if epoch:
            assert _reports(builder.frame(epoch, BTC_ETH, msgpack=msgpack)) == new
            assert _reports(builder.frame(epoch, eth, msgpack=msgpack)) == new
            assert _reports(builder.frame(epoch, btc, msgpack=msgpack)) == ()
    # a subscriber of each kind, from each epoch: the first frame, then later ones
    for choice in (ALL_ASSETS, BTC_ETH, eth):
        for start in range(4):
            config = AuditorConfig(VKEY, ORIGIN, attesters=(COLD_VKEY,), subscription=choice)
            auditor = Auditor(config, None, 0.0)
            for epoch in range(start, 4):
                frame = builder.frame(epoch, choice, msgpack=msgpack, first=epoch == start)
                assert frame is not None and frame.text is not msgpack
                decisions = auditor.handle(Frame(frame.payload, 0.0, msgpack))
                [verified] = [d for d in decisions if isinstance(d, Verified)]
                assert not verified.statuses, (choice, start, epoch)


def test_the_other_encoding_is_the_upstream_frame_re_encoded_once() -> None:
    """From a MessagePack upstream: its frames themselves to MessagePack
    subscribers of every asset, the same messages in JSON, built once per
    epoch, to JSON ones; and the reverse."""
    log, _ = _rotating()
    for upstream_msgpack in (True, False):
        history, builder = relayed(log.messages, msgpack=upstream_msgpack)
        for epoch in range(4):
            same = builder.frame(epoch, ALL_ASSETS, msgpack=upstream_msgpack)
            assert same is history.get(epoch)
            other = builder.frame(epoch, ALL_ASSETS, msgpack=not upstream_msgpack)
            assert other is not None and other.msgpack is not upstream_msgpack
            wanted = log.messages[epoch]
            encoded = wanted.to_json().encode() if upstream_msgpack else to_msgpack(wanted)
            assert other.payload == encoded and other.text is upstream_msgpack
            assert builder.frame(epoch, ALL_ASSETS, msgpack=not upstream_msgpack) is other
        assert builder.built == 4


def test_a_restarted_relay_knows_no_epoch_before_its_first() -> None:
    """The first epoch a relay appends has no epoch before it: its later
    frames carry every report, as a first one (more than needed, allowed)."""
    log, bound = _rotating()
    history = History(10, 2)
    builder = Builder(history)
    auditor = Auditor(AuditorConfig(VKEY, ORIGIN), None, 0.0)
    first = dataclasses.replace(log.messages[2], reports=tuple(bound[2].values()))
    for epoch, message in ((2, first), (3, log.messages[3])):
        [verified] = [
            d for d in auditor.handle(Frame(message.to_json(), 0.0)) if isinstance(d, Verified)
        ]
        assert isinstance(verified.audit.record, EpochRecord)
        received = Relayed(epoch, message.to_json().encode(), reports=verified.reports)
        entry = builder.append(received, verified.audit.record)
        assert entry.fresh == (None if epoch == 2 else frozenset())
    assert _reports(builder.frame(2, BTC_ETH)) == (bound[2]["BTC"], bound[2]["ETH"])
    assert _reports(builder.frame(3, BTC_ETH)) == ()
    with pytest.raises(ValueError, match="epoch 5 relayed after 3"):
        builder.append(Relayed(5, b""), EpochRecord.decode(log.messages[3].record))
