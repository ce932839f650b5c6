"""The auditor's policy (verifier.auditor) driven without sockets, files or clocks:
events in, decisions out."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.verifier.fakelog import ORIGIN, VKEY, FakeLog, record
from tests.verifier.test_watch_attested import COLD, COLD_VKEY, T0, report, serve
from tests.verifier.test_watch_attested import record as attested_record
from tests.verifier.witnesses import K1, K2, witnessed
from verifier.auditor import (
    Alarm,
    Auditor,
    AuditorConfig,
    ConfigurationError,
    Decision,
    Frame,
    RecoveredAsset,
    RecoveredWitnesses,
    Refused,
    SaveState,
    Stop,
    Tick,
    Verified,
)
from verifier.record import AssetState, EpochRecord, ReserveSource, Status
from verifier.report import ReserveReport, SignedReport, sign_report
from verifier.stream import EpochMessage


def auditor(now: float = 0.0, **config: object) -> Auditor:
    return Auditor(AuditorConfig(key=VKEY, origin=ORIGIN, **config), None, now)  # type: ignore[arg-type]


def feed(a: Auditor, message: EpochMessage, now: float = 1.0) -> list[Decision]:
    return a.handle(Frame(message.to_json(), now))


def kinds(decisions: list[Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def log_of(n: int) -> FakeLog:
    log = FakeLog()
    for _ in range(n):
        log.append()
    return log


def test_epochs_verify_and_save_state_first() -> None:
    a, log = auditor(max_epochs=2), log_of(2)
    first = feed(a, log.messages[0])
    assert kinds(first) == ["SaveState", "Verified"]
    assert isinstance(first[0], SaveState) and first[0].state.size == 1 == a.state.size  # type: ignore[union-attr]
    assert isinstance(first[1], Verified) and first[1].status("BTC") == "solvent"
    assert feed(a, log.messages[1])[-1] == Stop(0)  # --max-epochs reached, no alarm


def test_fork_is_an_alarm_with_evidence_of_both_roots() -> None:
    honest, forked = log_of(2), FakeLog()
    forked.append()
    forked.append(record(1, reserves=999))
    a = auditor()
    feed(a, honest.messages[0])
    feed(a, honest.messages[1])
    alarm, stop = feed(a, forked.messages[1])
    assert isinstance(alarm, Alarm) and alarm.check == "fork" and stop == Stop(1)
    assert alarm.evidence["last_verified_checkpoint"] == honest.messages[1].checkpoint.decode()
    assert alarm.evidence["message"]["checkpoint"] == forked.messages[1].checkpoint.decode()
    assert a.state is not None and a.state.size == 2  # the fork was not adopted


def test_rollback_on_reconnect_is_an_alarm() -> None:
    a, log = auditor(), log_of(3)
    for m in log.messages:
        feed(a, m)
    assert a.handle(Refused(503, since=3)) == []  # merely unavailable
    alarm, stop = a.handle(Refused(400, since=3, bad_since=True))
    assert isinstance(alarm, Alarm) and alarm.check == "log-rolled-back" and stop == Stop(1)
    assert a.handle(Refused(401, since=3)) == []  # a token refused later: not configuration


def test_silence_alarms_and_with_keep_going_repeats_each_period() -> None:
    a = auditor(now=100.0, keep_going=True, max_silence=2.0)
    assert a.handle(Tick(101.9)) == [] and a.silence.due() == 102.0
    [alarm] = a.handle(Tick(102.5))
    assert isinstance(alarm, Alarm) and alarm.check == "stale-log"
    assert alarm.reason == "no checkpoint verified for 2.5 s (--max-silence 2)"
    assert a.handle(Tick(103.0)) == []
    assert kinds(a.handle(Tick(104.0))) == ["Alarm"]  # again after a further period
    feed(a, log_of(1).messages[0], now=104.5)  # a verified epoch resets the count
    assert a.handle(Tick(106.0)) == [] and kinds(a.handle(Tick(106.5))) == ["Alarm"]
    assert a.violations == 3 and a.exit_code == 1
    stopping = auditor(now=0.0, max_silence=1.0)
    assert kinds(stopping.handle(Tick(1.0))) == ["Alarm", "Stop"]


def test_quorum_outage_alarms_once_and_recovers() -> None:
    log = log_of(4)
    cosigned = [witnessed(m, K1.name, K2.name) for m in log.messages]
    a = auditor(witnesses=(K1, K2), quorum=2, keep_going=True)
    assert kinds(feed(a, cosigned[0])) == ["SaveState", "Verified"]
    out = feed(a, witnessed(log.messages[1], K1.name))  # one of two: outage
    assert kinds(out) == ["SaveState", "Verified", "Alarm"]
    assert isinstance(out[2], Alarm) and out[2].check == "witness-quorum"
    kept = out[2].evidence["last_verified_checkpoint"]  # this epoch's: its custody verified
    assert kept.startswith(log.messages[1].checkpoint.decode())
    assert kinds(feed(a, log.messages[2])) == ["SaveState", "Verified"]  # still out: no repeat
    assert feed(a, cosigned[3])[-1] == RecoveredWitnesses("witness-quorum", 3)
    # Without --keep-going an outage stops before anything is saved.
    b = auditor(witnesses=(K1, K2), quorum=2)
    assert kinds(feed(b, log.messages[0])) == ["Alarm", "Stop"] and b.state is None


def test_unattested_and_report_mismatch_alarm_once_then_recover() -> None:
    log = serve(
        (attested_record(0, report(0)), (report(0),)),
        (attested_record(1, report(1)), ()),  # the report is omitted
        (attested_record(2, report(2)), ()),
        (attested_record(3, report(3), stated=10**9), (report(3),)),  # misstated
        (attested_record(4, report(4)), (report(4),)),
    )
    a = auditor(attesters=(COLD_VKEY,), keep_going=True)
    outs = [feed(a, m) for m in log.messages]
    assert [kinds(o) for o in outs] == [
        ["SaveState", "Verified"],
        ["SaveState", "Verified", "Alarm"],
        ["SaveState", "Verified"],  # still unattested: no repeat
        ["SaveState", "Verified", "Alarm"],  # worse now
        ["SaveState", "Verified", "RecoveredAsset"],
    ]
    checks = [d.check for o in outs for d in o if isinstance(d, Alarm)]
    assert checks == ["unattested", "report-mismatch"]
    assert outs[3][1].status("BTC") == "report-mismatch"  # type: ignore[union-attr]
    assert outs[4][-1] == RecoveredAsset("BTC", 4)


def test_wrong_key_on_first_contact_is_configuration_not_evidence() -> None:
    rogue = FakeLog(key=Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65))))
    rogue.append()
    rogue.append()
    a = auditor()
    [error] = feed(a, rogue.messages[0])
    assert isinstance(error, ConfigurationError) and "unknown-key" in error.message
    assert a.violations == 0
    assert a.handle(Refused(401, since=0)) == [
        ConfigurationError("the prover refused --token (401 unauthorized)")
    ]
    # Once something verified, another key is the custodian's doing: evidence.
    feed(a, log_of(1).messages[0])
    alarm, stop = feed(a, rogue.messages[1])
    assert isinstance(alarm, Alarm) and alarm.check == "unknown-key" and stop == Stop(1)


def test_malformed_frame_is_evidence_and_keep_going_goes_on() -> None:
    a = auditor(keep_going=True)
    [alarm] = a.handle(Frame("{not json", 1.0))
    assert isinstance(alarm, Alarm) and alarm.check == "format"
    assert "message" not in alarm.evidence
    garbled = dataclasses.replace(log_of(1).messages[0], record=b"\x00")
    assert kinds(feed(a, garbled)) == ["Alarm"]


def test_reports_come_once_and_are_kept_while_bound() -> None:
    """A connection's first frame carries every report its record binds, a
    later one only those new since the previous epoch (PROTOCOL §11.2): a
    report kept from an earlier frame attests an unchanged source, and is
    still held to the record; a new report left out of its frame is
    unattested. The auditor keeps only the reports its last record binds."""
    log = serve(
        (attested_record(0, report(0)), (report(0),)),  # the first frame: all of them
        (attested_record(1, report(0)), ()),  # unchanged source: nothing new
        (attested_record(2, report(0), stated=10**9), ()),  # the kept report contradicts it
        (attested_record(3, report(3)), (report(3),)),  # a new report, sent
        (attested_record(4, report(3)), ()),
        (attested_record(5, report(5)), ()),  # a new report, left out
        (attested_record(6, report(3)), ()),  # no longer kept: bound again, it must come again
    )
    a = auditor(attesters=(COLD_VKEY,), keep_going=True)
    outs = [feed(a, m) for m in log.messages]
    verified = [d for o in outs for d in o if isinstance(d, Verified)]
    assert [v.status("BTC") for v in verified] == [
        "solvent",
        "solvent",
        "report-mismatch",
        "solvent",
        "solvent",
        "unattested",
        "unattested",
    ]
    assert [v.reports for v in verified] == [
        (report(0),),
        (report(0),),
        (report(0),),
        (report(3),),
        (report(3),),
        (),
        (),
    ]
    checks = [d.check for o in outs for d in o if isinstance(d, Alarm)]
    assert checks == ["report-mismatch", "unattested"]
    assert a.reports == {}


def test_the_kept_reports_are_those_of_the_last_record_in_its_order() -> None:
    """Two assets: a frame carrying one new report keeps the other from before;
    ``Verified.reports`` lists what the record binds, in record order, even
    without attester keys (a relay hands them to its subscribers)."""
    eth_cold = sign_report(ReserveReport("cold", "ETH", 150, T0 - 500), COLD)
    eth_later = sign_report(ReserveReport("cold", "ETH", 150, T0 + 500), COLD)

    def two(epoch: int, btc: bytes, eth: bytes) -> bytes:
        assets = []
        for name, note in (("BTC", btc), ("ETH", eth)):
            signed = SignedReport.parse(note)
            r = signed.report
            source = ReserveSource("cold", r.amount, r.as_of_ms, signed.key_id, signed.hash)
            assets.append(
                AssetState(name, 8, 4, bytes(32), 100, r.amount, Status.SOLVENT, (source,))
            )
        return EpochRecord(epoch, T0 + epoch * 1000, 60_000, tuple(assets)).encode()

    log = serve(
        (two(0, report(0), eth_cold), (eth_cold, report(0))),  # any order on the wire
        (two(1, report(0), eth_later), (eth_later,)),
    )
    for config in ({"attesters": (COLD_VKEY,)}, {}):
        a = auditor(**config)
        verified = [d for m in log.messages for d in feed(a, m) if isinstance(d, Verified)]
        assert [v.reports for v in verified] == [(report(0), eth_cold), (report(0), eth_later)]
        assert all(v.status(n) == "solvent" for v in verified for n in ("BTC", "ETH"))


def test_frames_are_read_in_the_encoding_their_connection_negotiated() -> None:
    """MessagePack on a solvency-msgpack connection, in its canonical form
    only; JSON, or MessagePack where JSON was negotiated, is malformed."""
    from verifier.stream_binary import to_msgpack

    log = log_of(2)
    a = auditor(keep_going=True)
    assert kinds(a.handle(Frame(to_msgpack(log.messages[0]), 1.0, msgpack=True))) == [
        "SaveState",
        "Verified",
    ]
    text = log.messages[1].to_json()
    padded = to_msgpack(log.messages[1]) + b"\xc0"  # a trailing nil: not one message
    for data, msgpack, reason in (
        (text, True, "a text frame on a solvency-msgpack connection"),
        (text.encode(), True, "stream message"),
        (padded, True, "stream message"),
        (to_msgpack(log.messages[1]), False, "malformed"),
    ):
        [alarm] = a.handle(Frame(data, 1.0, msgpack))
        assert isinstance(alarm, Alarm) and alarm.check == "format" and reason in alarm.reason
    assert a.state is not None and a.state.size == 1
    assert kinds(a.handle(Frame(to_msgpack(log.messages[1]), 1.0, msgpack=True)))[:2] == [
        "SaveState",
        "Verified",
    ]
