"""Root stream subscribers held by one process, each frame timed by the kernel
as its last bytes reach the subscriber's socket (``SO_TIMESTAMPNS``).

    python benchmarks/stamped_subscribers.py --url ws://HOST:PORT --count N --out FILE.npz
        [--query assets=A000] [--encoding json|msgpack] [--wave 16] [--nice 10]

Run by bench_subscribers.py and bench_relays.py (there inside a relay's
network namespace, through ``ip netns exec``); ``Holders`` is their side.
The process opens ``--count`` subscriptions of ``/roots?QUERY`` in waves of
``--wave`` (each wave's handshakes answered before the next: the prover's
accept backlog is 64), offering the ``solvency-msgpack`` subprotocol with
``--encoding msgpack``. It prints one JSON line ``{"event": "ready", ...}``
once every subscription is open or refused, then records every frame:
(subscription, epoch, arrival, payload bytes, binary). On a line ``stop``
on its standard input, or its end, it writes them to ``--out`` (numpy
``.npz``) and prints ``{"event": "done", ...}`` with what it counted: shed
(closed) subscriptions by close code, wire bytes, the subprotocols selected.

Subscribers stand in for machines of their own: they run niced (bench_stream.py
says why) and their frames are timed by the kernel, not when this process
gets round to reading them. A frame's epoch is its checkpoint's size minus
one, read from the checkpoint note of any kind of frame (JSON or MessagePack).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
import numpy.typing as npt
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["MSGPACK", "Deliveries", "Holders", "epoch_of"]

MSGPACK = Subprotocol("solvency-msgpack")
SO_TIMESTAMPNS = 35  # Linux: each read carries the time its bytes reached the socket
STAMP = struct.Struct("qq")  # struct timespec
HANDSHAKES_IN_FLIGHT = 48  # below the prover's accept backlog (64), over all processes
CONNECT_TIMEOUT = 30.0  # s for one wave's TCP connects and handshakes
# The checkpoint note's second line is the log's size (C2SP tlog-checkpoint);
# found from the end, past any record: cheaper than decoding a full frame.
_JSON_SIZE = re.compile(rb'"checkpoint"\s*:\s*"[^"\\]*\\n(\d+)\\n')
_MSGPACK_SIZE = re.compile(
    rb"\xaacheckpoint(?:[\xa0-\xbf]|\xd9.|\xda..|\xdb....)[^\n]*\n(\d+)\n", re.S
)


class _Checkpointed(msgspec.Struct):
    checkpoint: str


_JSON = msgspec.json.Decoder(_Checkpointed)
_BINARY = msgspec.msgpack.Decoder(_Checkpointed)


def epoch_of(payload: bytes, binary: bool) -> int:
    """The epoch of a root stream frame of any kind: its checkpoint's size - 1."""
    key, pattern = (b"\xaacheckpoint", _MSGPACK_SIZE) if binary else (b'"checkpoint"', _JSON_SIZE)
    match = pattern.match(payload, max(0, payload.rfind(key)))
    if match is not None:
        return int(match.group(1)) - 1
    note = (_BINARY if binary else _JSON).decode(payload).checkpoint
    return int(note.split("\n", 2)[1]) - 1


class _Subscriber:
    """One subscription: a plain socket and websockets' sans-I/O client."""

    def __init__(self, index: int, url: str, query: str, encoding: str) -> None:
        self.index = index
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        uri = parse_uri(f"{url}/roots{'?' + query if query else ''}")
        offered = [MSGPACK] if encoding == "msgpack" else None
        self.protocol = ClientProtocol(uri, subprotocols=offered, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        self.sock.setblocking(False)
        self.status = 0  # the handshake's answer: 101, or a refusal's status
        self.close_code: int | None = None
        self.wire = 0  # bytes read

    def readable(self, frames: list[tuple[int, int, float, int, bool]]) -> bool:
        """Read what arrived; False once the connection is over."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(STAMP.size))
        except BlockingIOError:
            return True
        except OSError:
            data, ancillary = b"", []
        arrived = time.time()
        for level, kind, value in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
                seconds, nanoseconds = STAMP.unpack(value)
                arrived = seconds + nanoseconds / 1e9
        self.wire += len(data)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.status = event.status_code
            elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.BINARY):
                binary = event.opcode is Opcode.BINARY
                payload = bytes(event.data)
                epoch = epoch_of(payload, binary)
                frames.append((self.index, epoch, arrived, len(payload), binary))
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.close_code = int.from_bytes(event.data[:2]) if len(event.data) >= 2 else 1005
        self.flush()
        return bool(data)

    def flush(self) -> None:  # handshake, pongs, close: a few bytes, sent whole
        for data in self.protocol.data_to_send():
            try:
                if data:
                    self.sock.setblocking(True)
                    self.sock.sendall(data)
                    self.sock.setblocking(False)
                else:
                    self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return


def hold(args: argparse.Namespace) -> None:
    """The process's life (module docstring)."""
    os.nice(args.nice)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.count + 64)), hard))
    frames: list[tuple[int, int, float, int, bool]] = []
    subs: list[_Subscriber] = []
    gone: set[_Subscriber] = set()
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    stopping = False

    def serve(timeout: float) -> None:
        nonlocal stopping
        for key, _ in selector.select(timeout):
            if key.data is None:
                line = sys.stdin.readline()
                stopping = stopping or line.strip() in ("stop", "")
                continue
            sub: _Subscriber = key.data
            if not sub.readable(frames):
                selector.unregister(sub.sock)
                sub.sock.close()
                gone.add(sub)

    began = time.monotonic()
    for start in range(0, args.count, args.wave):
        wave = []
        for i in range(start, min(start + args.wave, args.count)):
            wave.append(_Subscriber(i, args.url, args.query, args.encoding))
            selector.register(wave[-1].sock, selectors.EVENT_READ, wave[-1])
        subs += wave
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while any(s.status == 0 and s not in gone for s in wave) and not stopping:
            if time.monotonic() > deadline:
                raise SystemExit(f"no answer to {args.url}'s handshakes within {CONNECT_TIMEOUT} s")
            serve(0.05)
        if stopping:
            break
    refused: dict[int, int] = {}
    for sub in subs:
        if sub.status != 101:
            refused[sub.status] = refused.get(sub.status, 0) + 1
    _say(
        event="ready",
        open=sum(s.status == 101 for s in subs),
        refused=refused,
        seconds=round(time.monotonic() - began, 2),
    )
    while not stopping:
        serve(0.5)
    for sub in subs:  # reset, not closed: no TIME_WAIT left holding the ports
        if sub not in gone:
            sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sub.sock.close()
    np.savez(
        args.out,
        sub=np.array([f[0] for f in frames], np.int64),
        epoch=np.array([f[1] for f in frames], np.int64),
        arrived=np.array([f[2] for f in frames], np.float64),
        size=np.array([f[3] for f in frames], np.int64),
        binary=np.array([f[4] for f in frames], np.bool_),
    )
    closed: dict[int, int] = {}
    for sub in subs:
        if sub.status == 101 and (sub.close_code is not None or sub in gone):
            code = sub.close_code or 1006
            closed[code] = closed.get(code, 0) + 1
    _say(
        event="done",
        frames=len(frames),
        closed=closed,
        wire_bytes=sum(s.wire for s in subs),
        selected=sum(s.protocol.subprotocol == MSGPACK for s in subs),
    )


def _say(**event: object) -> None:
    print(json.dumps(event), flush=True)


# The parent's side.


@dataclass(frozen=True)
class Deliveries:
    """Every frame every holder received: one row per frame; ``sub`` numbers
    subscriptions across the holders."""

    sub: npt.NDArray[np.int64]
    epoch: npt.NDArray[np.int64]
    arrived: npt.NDArray[np.float64]
    size: npt.NDArray[np.int64]
    binary: npt.NDArray[np.bool_]
    opened: int
    refused: dict[int, int]
    closed: dict[int, int]  # close code: subscriptions closed (1013: shed)
    selected: int  # subscriptions that got the msgpack subprotocol
    wire_bytes: int


_COLUMNS = ("sub", "epoch", "arrived", "size", "binary")


def _add(into: dict[int, int], more: dict[str, int]) -> None:
    for key, count in more.items():
        into[int(key)] = into.get(int(key), 0) + count


@dataclass
class Holders:
    """``count`` subscriptions of ``url`` held by ``processes`` holder processes,
    each started under ``prefix`` (e.g. ``ip netns exec NAME``)."""

    url: str
    count: int
    processes: int
    query: str
    encoding: str
    out_dir: Path
    prefix: Sequence[str] = ()
    wave: int = 0  # handshakes under way per process; 0: HANDSHAKES_IN_FLIGHT over all
    _procs: list[tuple[subprocess.Popen[str], Path, int]] = field(default_factory=list)
    _ready: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> None:
        """Start the holders (they connect in the background)."""
        script = Path(__file__).resolve()
        first = 0
        for p in range(self.processes):
            n = len(range(p, self.count, self.processes))
            if n == 0:
                continue
            out = self.out_dir / f"holder-{os.getpid()}-{id(self)}-{p}.npz"
            argv = [*self.prefix, sys.executable, str(script), "--url", self.url]
            argv += ["--count", str(n), "--query", self.query, "--encoding", self.encoding]
            wave = self.wave or max(1, HANDSHAKES_IN_FLIGHT // self.processes)
            argv += ["--out", str(out), "--wave", str(wave)]
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
            )
            self._procs.append((proc, out, first))
            first += n

    def wait_ready(self, timeout: float) -> tuple[int, dict[int, int]]:
        """Wait until every holder is ready: (subscriptions open, refused by status)."""
        deadline = time.monotonic() + timeout
        opened, refused = 0, dict[int, int]()
        for proc, _, _ in self._procs:
            line = _read_line(proc, deadline - time.monotonic())
            self._ready.append(line)
            opened += line["open"]
            _add(refused, line["refused"])
        return opened, refused

    def stop(self, timeout: float = 120) -> Deliveries:
        """Stop the holders and gather what they received."""
        for proc, _, _ in self._procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        parts: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in _COLUMNS}
        closed, refused, selected, wire = dict[int, int](), dict[int, int](), 0, 0
        deadline = time.monotonic() + timeout
        for proc, out, first in self._procs:
            done = _read_line(proc, deadline - time.monotonic())
            _add(closed, done["closed"])
            selected += done["selected"]
            wire += done["wire_bytes"]
            with np.load(out) as data:
                for key in _COLUMNS:
                    parts[key].append(data[key] + first if key == "sub" else data[key])
            out.unlink()
            proc.wait(30)
        for line in self._ready:
            _add(refused, line["refused"])
        self._procs.clear()

        def joined(key: str, dtype: type) -> npt.NDArray[Any]:
            return np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype)

        return Deliveries(
            sub=joined("sub", np.int64),
            epoch=joined("epoch", np.int64),
            arrived=joined("arrived", np.float64),
            size=joined("size", np.int64),
            binary=joined("binary", np.bool_),
            opened=sum(line["open"] for line in self._ready),
            refused=refused,
            closed=closed,
            selected=selected,
            wire_bytes=wire,
        )

    def kill(self) -> None:
        """End every holder still running (on failure)."""
        for proc, out, _ in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.unlink(missing_ok=True)
        self._procs.clear()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The holder's next JSON line, within ``timeout`` s."""
    stdout: IO[str] | None = proc.stdout
    assert stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(max(0.0, timeout)):
            raise SystemExit(f"a subscriber holder did not answer within {timeout:.0f} s")
    line = stdout.readline()
    if not line:
        raise SystemExit(f"a subscriber holder exited with status {proc.wait()}")
    event: dict[str, Any] = json.loads(line)
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://HOST:PORT of the prover or relay")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--query", default="", help="e.g. assets=A000 or only=checkpoints")
    parser.add_argument("--encoding", choices=("json", "msgpack"), default="json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wave", type=int, default=16, help="handshakes under way at once")
    parser.add_argument("--nice", type=int, default=10)
    hold(parser.parse_args())


if __name__ == "__main__":
    main()
