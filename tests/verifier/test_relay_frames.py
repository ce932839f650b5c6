"""The frames a relay builds for subscribers of chosen assets or of checkpoints
(verifier.relay_frames), without sockets: what the prover would send, built
once per epoch and choice, and verified by the subscriber as the prover's."""

from __future__ import annotations

import dataclasses

import pytest

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, asset, many
from tests.verifier.test_watch_attested import COLD, T0
from verifier import relay_frames
from verifier.assetmap import AssetMap
from verifier.audit import AuditState, check_epoch
from verifier.record import EpochRecord, ReserveSource
from verifier.relay_frames import Builder
from verifier.relay_history import History, Relayed
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.selection import PartialRecord
from verifier.stream import parse_message
from verifier.subscription import ALL_ASSETS, Subscription

NAMES = ("ADA", "BTC", "DOGE", "ETH", "SOL")
BTC_ETH = Subscription(assets=frozenset({"BTC", "ETH"}))
CHECKPOINTS = Subscription(checkpoints=True)


def relayed(log: FakeLog, capacity: int = 10) -> tuple[History, Builder]:
    history = History(capacity, 0)
    for epoch, message in enumerate(log.messages):
        history.append(Relayed(epoch, message.to_json().encode()))
    return history, Builder(history)


def five(epochs: int) -> FakeLog:
    log = FakeLog()
    for epoch in range(epochs):
        log.append(many(epoch, NAMES))
    return log


def test_built_frames_are_the_provers_and_verify() -> None:
    log = five(3)
    history, builder = relayed(log)
    state: AuditState | None = None
    for epoch in range(3):
        frame = builder.frame(epoch, BTC_ETH)
        assert frame is not None and frame.text and frame.epoch == epoch
        assert frame.payload == log.assets_frame(epoch, {"BTC", "ETH"}).to_json().encode()
        audit = check_epoch(state, parse_message(frame.payload), VKEY, ORIGIN, subscription=BTC_ETH)
        assert isinstance(audit.record, PartialRecord)
        assert [a.asset for a in audit.record.assets] == ["BTC", "ETH"]
        state = audit.state
        checkpoint = builder.frame(epoch, CHECKPOINTS)
        assert checkpoint is not None
        assert checkpoint.payload == log.checkpoint_frame(epoch).to_json().encode()
    # every asset: the upstream frame itself, byte for byte
    assert builder.frame(1, ALL_ASSETS) is history.get(1)
    assert builder.frame(3, BTC_ETH) is None  # not verified yet


def test_a_frame_is_built_once_per_epoch_and_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many subscribers ask, live or replaying; the asset map of an
    epoch is built once for all its choices."""
    maps: list[int] = []

    class CountingMap(AssetMap):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            maps.append(self.size)

    monkeypatch.setattr(relay_frames, "AssetMap", CountingMap)
    log = five(4)
    _, builder = relayed(log)
    choices = [BTC_ETH, Subscription(assets=frozenset({"CAT"})), CHECKPOINTS]
    for _subscriber in range(50):
        for epoch in range(4):
            for choice in choices:
                builder.frame(epoch, choice)
    assert builder.built == 4 * 3
    assert maps == [5] * 4  # checkpoints need none
    same = [builder.frame(2, Subscription(assets=frozenset({"ETH", "BTC"}))) for _ in range(3)]
    assert same[0] is same[1] is same[2] and builder.built == 12


def test_the_live_epoch_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    log = five(1)
    history = History(10, 0)
    builder = Builder(history)
    frame = Relayed(0, log.messages[0].to_json().encode())
    history.append(frame)
    builder.verified(frame, EpochRecord.decode(log.messages[0].record))

    def refuse(data: bytes) -> EpochRecord:
        raise AssertionError("decoded again")

    monkeypatch.setattr(relay_frames.EpochRecord, "decode", refuse)
    assert builder.frame(0, BTC_ETH) is not None


def test_built_frames_are_kept_within_the_budget() -> None:
    log = five(6)
    history, _ = relayed(log)
    last = sum(len(log.assets_frame(e, {"BTC", "ETH"}).to_json()) for e in (3, 4, 5))
    builder = Builder(history, budget=last)
    for epoch in range(6):
        builder.frame(epoch, BTC_ETH)
    assert builder.built == 6
    for epoch in (3, 4, 5):  # the last 3 are kept
        builder.frame(epoch, BTC_ETH)
    assert builder.built == 6
    builder.frame(0, BTC_ETH)  # gone: built again
    assert builder.built == 7


def test_an_epoch_that_left_the_history_is_not_built() -> None:
    log = five(5)
    history, builder = relayed(log, capacity=2)
    assert history.first == 3
    assert builder.frame(2, BTC_ETH) is None and builder.built == 0
    assert builder.frame(3, BTC_ETH) is not None


def test_a_built_frame_carries_the_chosen_assets_reports_only() -> None:
    """The reports of the chosen assets' attested sources, in record order, not
    those of the neighbours sent to prove an absence; with them the
    subscriber's --attester check passes."""
    reports = {
        name: sign_report(ReserveReport("cold", name, 150, T0 - 500), COLD)
        for name in ("BTC", "DOGE", "ETH")
    }
    assets = []
    for name in NAMES:
        a = asset(name, 0)
        if name in reports:
            signed = SignedReport.parse(reports[name])
            source = ReserveSource("cold", 150, T0 - 500, signed.key_id, signed.hash)
            a = dataclasses.replace(a, sources=(source,))
        assets.append(a)
    log = FakeLog()
    log.append(EpochRecord(0, T0, 60_000, tuple(assets)).encode(), tuple(reports.values()))
    _, builder = relayed(log)
    for chosen, want in (({"ETH", "BTC"}, ["BTC", "ETH"]), ({"CAT"}, []), ({"SOL"}, [])):
        frame = builder.frame(0, Subscription(assets=frozenset(chosen)))
        assert frame is not None
        message = parse_message(frame.payload)
        assert message.reports == tuple(reports[n] for n in want)  # type: ignore[union-attr]
