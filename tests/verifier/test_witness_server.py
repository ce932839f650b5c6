"""The witness's I/O (PROTOCOL §12.2): its durable state directory, its HTTP
server on 127.0.0.1, its command line, and kill -9 at random instants."""

from __future__ import annotations

import http.client
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.verifier.fakelog import KEY, VKEY
from tests.verifier.test_witness import FORK, HONEST, NAME, NOW, WITNESS_KEY, body, make_log
from verifier import rfc9162
from verifier.checkpoint import split_note, verifier_key_for
from verifier.cli import main
from verifier.cosignature import verify_cosignatures, witness_key_for
from verifier.witness import Witness, format_signer_key, parse_checkpoint_body
from verifier.witness_server import (
    StateError,
    StateStore,
    WitnessHTTPServer,
    WitnessService,
    state_file_name,
)

ROOT = Path(__file__).resolve().parents[2]
WKEY = witness_key_for(NAME, WITNESS_KEY.public_key())


def service(directory: Path, *keys: object, now: float = NOW) -> WitnessService:
    store = StateStore(directory)
    store.open()
    witness = Witness(NAME, WITNESS_KEY, keys or [VKEY])  # type: ignore[arg-type]
    return WitnessService(witness, store, clock=lambda: now)


def test_state_file_names_are_injective_and_plain() -> None:
    origins = ["example.com/log", "example.com%2Flog", "example.com_log", ".", "..", "a b", "é"]
    names = [state_file_name(o) for o in origins]
    assert len(set(names)) == len(names)
    assert all("/" not in n and not n.startswith(".") for n in names)
    assert state_file_name("example.com/log") == "example%2Ecom%2Flog.state"


def test_state_survives_a_restart_and_the_witness_resumes(tmp_path: Path) -> None:
    first = service(tmp_path)
    assert first.add_checkpoint(body(HONEST, 0, 10)).status == 200
    first.store.close()
    second = service(tmp_path, now=NOW + 5)
    assert second.store.states[HONEST.origin].size == 10
    stale = second.add_checkpoint(body(HONEST, 0, 12))
    assert (stale.status, stale.body, stale.content_type) == (409, b"10\n", "text/x.tlog.size")
    assert second.add_checkpoint(body(HONEST, 10, 12)).status == 200
    assert second.add_checkpoint(body(FORK, 12, 15)).status == 422
    second.store.close()
    assert StateStore(tmp_path).states == {}  # nothing loaded before open()
    third = service(tmp_path)
    assert third.store.states[HONEST.origin].size == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "example%2Ecom%2Fsolvency%2Ftest.state",
        "lock",
    ]


def test_only_one_witness_per_state_directory(tmp_path: Path) -> None:
    service(tmp_path)
    with pytest.raises(StateError, match="in use"):
        service(tmp_path)


def test_a_torn_temporary_file_is_ignored_and_removed(tmp_path: Path) -> None:
    first = service(tmp_path)
    assert first.add_checkpoint(body(HONEST, 0, 10)).status == 200
    first.store.close()
    tmp = tmp_path / (".tmp." + state_file_name(HONEST.origin))
    tmp.write_bytes(b"witness-state/v1\n\xe2\x80\x94 torn")
    second = service(tmp_path)
    assert second.store.states[HONEST.origin].size == 10 and not tmp.exists()


def test_a_corrupt_or_misplaced_state_refuses_to_start(tmp_path: Path) -> None:
    first = service(tmp_path)
    assert first.add_checkpoint(body(HONEST, 0, 10)).status == 200
    first.store.close()
    path = tmp_path / state_file_name(HONEST.origin)
    good = path.read_bytes()
    path.write_bytes(good[:-30])
    with pytest.raises(StateError, match="corrupt"):
        StateStore(tmp_path).open()
    path.unlink()
    (tmp_path / state_file_name("example.com/other")).write_bytes(good)
    with pytest.raises(StateError, match="holds the state of"):
        StateStore(tmp_path).open()


def test_a_state_of_an_unconfigured_log_is_kept_unused(tmp_path: Path) -> None:
    other = make_log(5, origin="example.com/other")
    both = service(tmp_path, VKEY, verifier_key_for(other.origin, KEY.public_key()))
    assert both.add_checkpoint(body(other, 0, 5)).status == 200
    both.store.close()
    one = service(tmp_path)
    assert one.store.states[other.origin].size == 5
    assert one.add_checkpoint(body(other, 5, 5)).status == 404
    assert one.checkpoint(other.origin).status == 404


def test_a_failed_write_is_not_cosigned_and_keeps_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = service(tmp_path)
    assert svc.add_checkpoint(body(HONEST, 0, 10)).status == 200

    def full(state: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(svc.store, "save", full)
    response = svc.add_checkpoint(body(HONEST, 10, 12))
    assert (response.status, svc.store.states[HONEST.origin].size) == (500, 10)


def test_a_fork_of_the_same_size_is_kept_as_evidence(tmp_path: Path) -> None:
    svc = service(tmp_path)
    assert svc.add_checkpoint(body(HONEST, 0, 20)).status == 200
    assert svc.add_checkpoint(body(FORK, 20, 20)).status == 409
    assert svc.add_checkpoint(body(FORK, 20, 20)).status == 409
    (evidence,) = (tmp_path / "evidence").iterdir()
    assert evidence.read_bytes() == FORK.checkpoint(20)
    assert svc.store.states[HONEST.origin].note == HONEST.checkpoint(20)


def test_concurrent_first_contacts_cosign_exactly_one(tmp_path: Path) -> None:
    """The race of C2SP tlog-witness: check and persist are one step per origin."""
    svc = service(tmp_path)
    statuses: dict[int, int] = {}
    barrier = threading.Barrier(8)

    def submit(size: int) -> None:
        barrier.wait()
        statuses[size] = svc.add_checkpoint(body(HONEST, 0, size)).status

    threads = [threading.Thread(target=submit, args=(size,)) for size in range(3, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [size for size, status in statuses.items() if status == 200]
    assert len(winners) == 1 and sorted(statuses.values()).count(409) == 7
    assert svc.store.states[HONEST.origin].size == winners[0]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WitnessHTTPServer]:
    http_server = WitnessHTTPServer(("127.0.0.1", 0), service(tmp_path))
    thread = threading.Thread(target=http_server.serve_forever, args=(0.05,))
    thread.start()
    yield http_server
    http_server.shutdown()
    http_server.server_close()
    thread.join()


def test_http_keep_alive_add_checkpoint_and_monitoring(server: WitnessHTTPServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)

    def post(data: bytes, path: str = "/add-checkpoint") -> tuple[int, str, bytes]:
        connection.request("POST", path, data)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()

    status, _, line = post(body(HONEST, 0, 9))
    assert status == 200
    assert verify_cosignatures(HONEST.checkpoint(9) + line, [WKEY], 1)
    assert post(body(HONEST, 0, 12)) == (409, "text/x.tlog.size", b"9\n")
    assert post(body(HONEST, 9, 12))[0] == 200
    assert post(body(FORK, 12, 14))[0] == 422
    assert post(body(HONEST, 13, 12, []))[0] == 400
    assert post(b"old 0\n\n" + make_log(2, origin="x.example").checkpoint(2))[0] == 404
    assert post(body(HONEST, 12, 12), path="/other")[0] == 404
    connection.request("GET", f"/checkpoint?origin={HONEST.origin}")
    response = connection.getresponse()
    note = response.read()
    assert response.status == 200 and split_note(note)[0] == split_note(HONEST.checkpoint(12))[0]
    (cosignature,) = verify_cosignatures(note, [WKEY], 1)
    assert cosignature.timestamp == NOW
    connection.request("GET", "/checkpoint?origin=x.example")
    assert connection.getresponse().read() and connection.sock is not None  # still open


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        return sock.recv(4096)


def test_http_length_limits(server: WitnessHTTPServer) -> None:
    port = server.server_address[1]
    head = b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\n"
    too_large = raw_request(port, head + b"Content-Length: 65537\r\n\r\n")
    assert too_large.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in too_large
    chunked = raw_request(port, head + b"Transfer-Encoding: chunked\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert raw_request(port, head + b"\r\n").startswith(b"HTTP/1.1 411 ")


# The command line


def write_key(path: Path, mode: int = 0o600) -> Path:
    path.write_text(format_signer_key(NAME, WITNESS_KEY) + "\n")
    path.chmod(mode)
    return path


def test_witness_key_creates_a_private_key_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w.key"
    assert main(["witness-key", "--name", "w.example/1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    text = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600 and text.startswith("PRIVATE+KEY+w.example/1+")
    assert printed.startswith("w.example/1+") and printed.split("+")[1] == text.split("+")[3]
    assert main(["witness-key", "--name", "w.example/1", "--out", str(out)]) == 2
    assert out.read_text() == text
    assert main(["witness-key", "--name", "a b", "--out", str(tmp_path / "x")]) == 2


def test_witness_refuses_a_key_file_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = write_key(tmp_path / "w.key", 0o640)
    args = ["witness", "--key-file", str(key), "--log", str(VKEY), "--state", str(tmp_path / "s")]
    assert main(args) == 2
    assert "chmod 600" in capsys.readouterr().err
    key.chmod(0o600)
    assert main([*args[:4], "--log", "nonsense", *args[5:]]) == 2
    assert main([*args, "--listen", "nowhere"]) == 2


class WitnessProcess:
    """``solvency-verify witness`` as a child process on 127.0.0.1."""

    def __init__(self, tmp_path: Path, log_keys: list[str]) -> None:
        self.key = write_key(tmp_path / "w.key")
        self.state = tmp_path / "state"
        self.stderr = tmp_path / "witness.log"
        self.log_keys = log_keys
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        args = ["--key-file", str(self.key), "--state", str(self.state), "--listen", "127.0.0.1:0"]
        for key in self.log_keys:
            args += ["--log", key]
        offset = self.stderr.stat().st_size if self.stderr.exists() else 0
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "verifier.cli", "witness", *args], cwd=ROOT, stderr=err
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = re.search(rb"listening on http://127\.0\.0\.1:(\d+)/", self.log()[offset:])
            if found:
                self.port = int(found[1])
                return
            assert self.proc.poll() is None, self.log().decode()
            time.sleep(0.005)
        raise AssertionError("the witness did not start")

    def log(self) -> bytes:
        return self.stderr.read_bytes()

    def stop(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(10)


def test_witness_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    witness = WitnessProcess(tmp_path, [str(VKEY)])
    witness.start()
    connection = http.client.HTTPConnection("127.0.0.1", witness.port, timeout=5)
    connection.request("POST", "/add-checkpoint", body(HONEST, 0, 4))
    assert connection.getresponse().status == 200
    connection.close()
    assert witness.stop(signal.SIGTERM) == 0
    witness.start()
    assert witness.stop(signal.SIGINT) == 0
    log = witness.log().decode()
    assert "size 4" in log and "witness stopped" in log and "Traceback" not in log
    assert f"witness {WKEY} listening on" in log


def test_kill_9_never_yields_two_inconsistent_cosignatures(tmp_path: Path) -> None:
    """Grow an honest log through the witness, slipping in checkpoints of a fork,
    while the witness is killed at random instants and restarted."""
    rng = random.Random(1)
    honest, fork = make_log(2000), make_log(2000, fork_at=3)
    witness = WitnessProcess(tmp_path, [str(VKEY)])
    cosigned: list[tuple[int, bytes]] = []  # (size, root) of every 200 answer
    restored: list[tuple[int, bytes]] = []  # the state read back after each restart
    pending: tuple[int, bytes] | None = None  # the request a kill left unanswered
    last: tuple[int, bytes] | None = None  # the witness's state as last learned
    refused_forks = kills = 0
    known = 0  # the witness's size as far as this client has learned it
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        witness.start()
        assert witness.proc is not None
        state = read_state(witness.port)
        if state is not None:
            # the last cosigned checkpoint, or the one persisted but not answered
            assert state in (last, pending), (state, last, pending)
            restored.append(state)
            last = state
        connection = http.client.HTTPConnection("127.0.0.1", witness.port, timeout=5)
        for left in range(rng.randint(1, 12), 0, -1):  # kill 0 to 1.5 ms into the last
            log = fork if known > 3 and rng.random() < 0.25 else honest
            size = min(known + rng.choice((0, 1, 1, 2, 5)), 2000)
            old = known if rng.random() < 0.9 else max(known - 1, 0)
            pending = (size, rfc9162.root_from_leaf_hashes(log.hashes[:size]))
            try:
                connection.request("POST", "/add-checkpoint", body(log, old, size))
                if left == 1:
                    time.sleep(rng.uniform(0, 0.0015))
                    witness.proc.kill()
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                break  # killed
            if response.status == 200:
                assert verify_cosignatures(log.checkpoint(size) + answer, [WKEY], 1)
                cosigned.append(pending)
                last, known = pending, size
            elif response.getheader("Content-Type") == "text/x.tlog.size":
                assert response.status == 409
                known = int(answer)
            else:
                assert log is fork and response.status in (409, 422), (response.status, answer)
                refused_forks += 1
            pending = None
        assert witness.proc.wait(5) == -signal.SIGKILL
        kills += 1
    stats = f"{kills} kills, {len(cosigned)} cosigned, {refused_forks} forks refused"
    assert kills >= 15 and len({size for size, _ in cosigned}) >= 20, stats
    assert refused_forks >= 10 and len(restored) >= kills - 1, stats
    for size, root in cosigned + restored:
        # every view is a prefix of the honest log: any two are consistent
        assert root == rfc9162.root_from_leaf_hashes(honest.hashes[:size])


def read_state(port: int) -> tuple[int, bytes] | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", f"/checkpoint?origin={HONEST.origin}")
    response = connection.getresponse()
    note = response.read()
    if response.status == 404:
        return None
    assert verify_cosignatures(note, [WKEY], 1)
    checkpoint = parse_checkpoint_body(split_note(note)[0])
    return checkpoint.size, checkpoint.root
