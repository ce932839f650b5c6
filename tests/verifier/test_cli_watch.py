"""solvency-verify watch end to end, against real WebSocket servers on 127.0.0.1
serving a fake custodian's log, an unused port, and servers that go quiet."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.verifier.fakelog import VKEY, FakeLog, record
from tests.verifier.witnesses import K1, K2, NOW, witnessed
from verifier import quorum
from verifier.cli import _parser, main
from verifier.stream import EpochMessage, StreamMessage
from verifier.watch import SilenceAlarm, Watcher


class FakeProver:
    """Serves /roots on 127.0.0.1 from a list of messages, in its own thread;
    with ``log``, ``?assets=`` and ``?only=checkpoints`` as the prover does."""

    def __init__(
        self,
        messages: list[EpochMessage],
        hold: float | None = None,
        refusals: Sequence[tuple[int, bytes]] = (),
        log: FakeLog | None = None,
    ) -> None:
        self.messages = messages
        self.log = log
        self.queries: list[str] = []
        self.hold = hold
        self.refusals = list(refusals)  # (status, body) answered to the first handshakes
        self.sinces: list[int] = []
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = urlsplit(ws.request.path).query
        self.queries.append(query)
        params = parse_qs(query)
        since = int(params.get("since", ["0"])[0])
        self.sinces.append(since)
        for epoch in range(since, len(self.messages)):
            m: StreamMessage = self.messages[epoch]
            if self.log is not None and "assets" in params:
                m = self.log.assets_frame(epoch, params["assets"][0].split(","))
            elif self.log is not None and "only" in params:
                m = self.log.checkpoint_frame(epoch)
            await ws.send(m.to_json())
        if self.hold is not None:  # a flapping prover: it closes after a while
            await asyncio.sleep(self.hold)
            await ws.close()
        await ws.wait_closed()  # then stay silent, as a stalled prover would

    def _refuse(self, ws: ServerConnection, request: Request) -> Response | None:
        if not self.refusals:
            return None
        status, body = self.refusals.pop(0)
        return ws.respond(status, body.decode())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._refuse) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeProver:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
def history() -> Iterator[FakeLog]:
    log = FakeLog()
    for _ in range(6):
        log.append()
    yield log


def watch(url: str, state: Path, *extra: str) -> int:
    return main(["watch", url, "--key", str(VKEY), "--state", str(state), "--json", *extra])


def events(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_watch_verifies_and_resumes(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(history.messages) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "4") == 0
        assert [e["epoch"] for e in events(capsys) if e["event"] == "epoch"] == [0, 1, 2, 3]
        assert watch(prover.url, tmp_path, "--max-epochs", "2") == 0
        assert [e["epoch"] for e in events(capsys) if e["event"] == "epoch"] == [4, 5]
        assert prover.sinces == [0, 4]
    assert json.loads((tmp_path / "state.json").read_text())["size"] == 6


@pytest.mark.timeout(30)
def test_watch_backs_off_while_refused_then_resumes(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refusals (503, then 401) are retried after growing delays, each announced
    with its status; then the watch resumes where it stopped."""
    with FakeProver(history.messages) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "2") == 0
        prover.refusals = [(503, b"busy"), (401, b"no token")]
        capsys.readouterr()
        assert watch(prover.url, tmp_path, "--max-epochs", "4") == 0
        assert prover.sinces == [0, 2]
    found = events(capsys)
    refused = [e for e in found if e["event"] == "refused"]
    assert [e["status"] for e in refused] == [503, 401]
    assert 0 <= refused[0]["retry_in"] <= 1.0 and refused[1]["retry_in"] == 1.0
    assert [e["epoch"] for e in found if e["event"] == "epoch"] == [2, 3, 4, 5]


def test_watch_alarms_when_refused_a_since_it_verified(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """400 bad-since on reconnect: the log is shorter than what this auditor verified."""
    with FakeProver(history.messages) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "3") == 0
        prover.refusals = [(400, b'{"error": "bad-since"}')]
        capsys.readouterr()
        assert watch(prover.url, tmp_path) == 1
    [alarm] = [e for e in events(capsys) if e["event"] == "violation"]
    assert alarm["check"] == "log-rolled-back" and Path(alarm["evidence"]).exists()


@pytest.mark.timeout(30)
def test_watch_reconnects_from_the_last_verified_epoch(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prover that drops every connection after 0.1 s: each reconnect asks for
    what follows the last verified epoch, so nothing is replayed."""
    with FakeProver(history.messages[:3], hold=0.1) as prover:
        argv = ["watch", prover.url, "--key", str(VKEY), "--state", str(tmp_path), "--json"]
        watcher = Watcher(_parser().parse_args(argv))

        async def for_a_while() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(watcher.run(), 2.5)

        asyncio.run(for_a_while())
        assert 3 <= len(prover.sinces) <= 5 and prover.sinces[0] == 0
        assert set(prover.sinces[1:]) == {3}
    found = events(capsys)
    assert [e["epoch"] for e in found if e["event"] == "epoch"] == [0, 1, 2]
    assert not [e for e in found if e["event"] == "violation"]
    # once after the frames, at once; then, the connections bringing nothing, backed off
    retries = [e["retry_in"] for e in found if e["event"] == "disconnected"]
    assert retries[0] == 0 and 0 <= retries[1] < 1 and retries[2:3] in ([], [1.0])


def test_watch_catches_a_fork_across_restarts(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(history.messages[:4]) as prover:
        assert watch(prover.url, tmp_path, "--max-epochs", "4") == 0
    twin = FakeLog()
    twin.append()
    twin.append(record(1, liabilities=7))  # epoch 1 rewritten after the auditor saw it
    for _ in range(2, 6):
        twin.append()
    with FakeProver(twin.messages) as prover:
        assert watch(prover.url, tmp_path) == 1
    alarm = next(e for e in events(capsys) if e["event"] == "violation")
    assert alarm["check"] == "fork" and not alarm["reason"].startswith("fork")
    evidence = json.loads(Path(alarm["evidence"]).read_text())
    assert evidence["last_verified_checkpoint"] and evidence["message"]["checkpoint"]


def test_watch_alarms_on_insolvency_and_keeps_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = FakeLog()
    log.append()
    log.append(record(1, liabilities=500))
    log.append()
    with FakeProver(log.messages) as prover:
        assert watch(prover.url, tmp_path / "a") == 1
        found = events(capsys)
        assert [e["event"] for e in found] == ["epoch", "epoch", "violation"]
        assert found[-1]["check"] == "insolvent"
        assert watch(prover.url, tmp_path / "b", "--keep-going", "--max-epochs", "3") == 1
        assert [e["event"] for e in events(capsys)].count("epoch") == 3


def test_watch_alarms_on_silence(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProver(history.messages[:1]) as prover:
        assert watch(prover.url, tmp_path, "--max-silence", "0.3") == 1
    assert events(capsys)[-1]["check"] == "stale-log"


def test_silence_alarm_schedule() -> None:
    """One alarm when silence reaches S, then one per further S; a verified epoch resets."""
    alarm = SilenceAlarm(2.0, now=100.0)
    assert alarm.due() == 102.0 and alarm.poll(101.9) is None
    assert alarm.poll(102.5) == 2.5 and alarm.poll(103.9) is None
    assert alarm.poll(104.0) == 4.0 and alarm.due() == 106.0
    assert alarm.poll(111.0) == 11.0  # a suspended process: one alarm, not three
    assert alarm.due() == 112.0
    alarm.verified(111.5)
    assert alarm.poll(113.0) is None and alarm.poll(113.5) == 2.0


@pytest.mark.timeout(20)
def test_watch_alarms_when_the_prover_is_unreachable(
    unused_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    assert watch(f"ws://127.0.0.1:{unused_port}", tmp_path, "--max-silence", "0.3") == 1
    assert time.monotonic() - start < 5
    found = events(capsys)
    assert found[0]["event"] == "disconnected"
    assert found[-1]["event"] == "violation" and found[-1]["check"] == "stale-log"
    assert Path(found[-1]["evidence"]).exists()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("hold", [None, 0.1], ids=["quiet", "flapping"])
def test_watch_alarms_on_a_prover_that_accepts_and_says_nothing(
    hold: float | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quiet: connected, nothing sent. Flapping: each connection closed after 0.1 s, so
    silence must be counted across reconnects, not per connection."""
    with FakeProver([], hold=hold) as prover:
        assert watch(prover.url, tmp_path, "--max-silence", "0.5") == 1
    assert events(capsys)[-1]["check"] == "stale-log"


@pytest.mark.timeout(20)
def test_keep_going_alarms_once_per_period_while_unreachable(
    unused_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ws://127.0.0.1:{unused_port}"
    argv = ["watch", url, "--key", str(VKEY), "--state", str(tmp_path), "--json"]
    args = _parser().parse_args([*argv, "--keep-going", "--max-silence", "0.4"])
    watcher = Watcher(args)

    async def for_a_while() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watcher.run(), 1.1)

    asyncio.run(for_a_while())
    found = events(capsys)
    assert [e["check"] for e in found if e["event"] == "violation"] == ["stale-log"] * 2
    assert [e["event"] for e in found].count("disconnected") >= 1


def test_wrong_key_on_first_contact_is_configuration_not_evidence(
    history: FakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rogue = FakeLog(key=Ed25519PrivateKey.from_private_bytes(bytes(range(33, 65))))
    for _ in range(3):
        rogue.append()
    with FakeProver(rogue.messages) as prover:
        assert watch(prover.url, tmp_path / "a") == 2
        captured = capsys.readouterr()
        assert "do not verify with --key" in captured.err and "unknown-key" in captured.err
        doc = json.loads(captured.out.splitlines()[-1])
        assert (doc["event"], doc["exit"], doc["error"]) == ("error", 2, "usage")
        assert list((tmp_path / "a").iterdir()) == []  # no evidence, no state
    with FakeProver(history.messages) as prover:
        assert watch(prover.url, tmp_path / "b", "--origin", "other.example/log") == 2
        assert "origin-mismatch" in capsys.readouterr().err
        assert list((tmp_path / "b").iterdir()) == []
        # Once something verified, another key is the custodian's doing: evidence.
        assert watch(prover.url, tmp_path / "c", "--max-epochs", "2") == 0
    with FakeProver(rogue.messages) as prover:
        assert watch(prover.url, tmp_path / "c") == 1
    alarm = events(capsys)[-1]
    assert alarm["check"] == "unknown-key" and Path(alarm["evidence"]).exists()


def test_unusable_state_is_an_operational_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir" / "state.json").mkdir(parents=True)
    for state in (tmp_path / "file" / "state", tmp_path / "dir"):
        assert watch("ws://127.0.0.1:1", state) == 3
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and "Traceback" not in captured.err
        doc = json.loads(captured.out)
        assert (doc["exit"], doc["error"]) == (3, "operational")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quorum, "clock", lambda: NOW)


WITNESSES = ("--witness", str(K1), "--witness", str(K2))


def test_watch_reports_who_cosigned_each_epoch(
    clock: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = FakeLog()
    messages = [witnessed(log.append(), "w1.example", "w2.example") for _ in range(3)]
    with FakeProver(messages) as prover:
        assert watch(prover.url, tmp_path, *WITNESSES, "--max-epochs", "3") == 0
        found = events(capsys)
        argv = ["watch", prover.url, "--key", str(VKEY), "--state", str(tmp_path / "h")]
        assert main([*argv, *WITNESSES, "--max-epochs", "1"]) == 0
        assert "| cosigned by w1.example, w2.example\n" in capsys.readouterr().out
    assert [[c["name"] for c in e["cosigned_by"]] for e in found] == [
        ["w1.example", "w2.example"]
    ] * 3
    saved = json.loads((tmp_path / "state.json").read_text())["checkpoint"]
    assert saved == messages[2].checkpoint.decode()  # the evidence keeps the cosignatures


def test_watch_stops_on_a_checkpoint_without_the_quorum(
    clock: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = FakeLog()
    messages = [
        witnessed(log.append(), "w1.example", "w2.example"),
        witnessed(log.append(), "w1.example"),
    ]
    with FakeProver(messages) as prover:
        assert watch(prover.url, tmp_path, *WITNESSES) == 1
    found = events(capsys)
    assert [e["event"] for e in found] == ["epoch", "violation"]
    assert found[1]["check"] == "witness-quorum" and "(w1.example)" in found[1]["reason"]
    evidence = json.loads(Path(found[1]["evidence"]).read_text())
    assert evidence["message"]["checkpoint"] == messages[1].checkpoint.decode()
    assert json.loads((tmp_path / "state.json").read_text())["size"] == 1  # not accepted


def test_watch_keep_going_follows_and_alarms_once_per_outage(
    clock: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a witness is down the chain of custody is still followed: one alarm when
    the quorum is lost, a recovery when it is back, and the cosigners of every epoch."""
    log = FakeLog()
    cosigners = [
        ("w1.example", "w2.example"),
        ("w1.example",),
        ("w1.example",),
        ("w1.example", "w2.example"),
    ]
    messages = [witnessed(log.append(), *names) for names in cosigners]
    with FakeProver(messages) as prover:
        assert watch(prover.url, tmp_path, *WITNESSES, "--keep-going", "--max-epochs", "4") == 1
    found = events(capsys)
    assert [(e["event"], e.get("epoch", e.get("check"))) for e in found] == [
        ("epoch", 0),
        ("epoch", 1),
        ("violation", "witness-quorum"),
        ("epoch", 2),
        ("epoch", 3),
        ("recovered", 3),
    ]
    assert [
        tuple(c["name"] for c in e["cosigned_by"]) for e in found if e["event"] == "epoch"
    ] == cosigners
    assert found[-1]["check"] == "witness-quorum"
    assert json.loads((tmp_path / "state.json").read_text())["size"] == 4
