"""The witness's I/O: a durable state directory and an HTTP/1.1 server around
the sans-I/O ``verifier.witness`` core (C2SP tlog-witness; PROTOCOL §12.2).

Durability rule: for each origin, checking a submission against the stored
state and writing the new state are done under that origin's lock, and the
new state is on disk (temporary file written and fsynced, renamed over the
state file, directory fsynced) before the 200 answer is sent. A witness killed
at any instant therefore restarts from a state at least as new as every
cosignature it gave, and every state it ever wrote extends the one before: it
cannot cosign two inconsistent checkpoints. A leftover temporary file is
ignored (and removed at start); a state file that does not parse stops the
witness from starting, never resets the log's state.

Only one witness process may use a state directory (an exclusive ``flock`` on
``DIR/lock``, released by the kernel when the process dies).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from verifier.errors import FormatError
from verifier.witness import MAX_BODY, Cosigned, LogState, Refusal, Witness

__all__ = ["Response", "StateError", "StateStore", "WitnessHTTPServer", "WitnessService"]

log = logging.getLogger("solvency.witness")

STATE_SUFFIX = ".state"
TMP_PREFIX = ".tmp."
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_FILE_NAME = 255


class StateError(Exception):
    """The state directory cannot be used: locked, unreadable or corrupt."""


def state_file_name(origin: str) -> str:
    """An injective file name for ``origin``: every UTF-8 byte but ``A-Z a-z 0-9
    - _`` as ``%XX``, then ``.state``; never ``.``-leading, never a path."""
    escaped = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in origin.encode("utf-8"))
    return escaped + STATE_SUFFIX


class StateStore:
    """One file per origin in ``directory``, written atomically. Loads every
    state at start (``open``) and serves later reads from memory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.states: dict[str, LogState] = {}
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed, lock it, remove leftover temporary
        files and load every state.

        Raises:
            StateError: another process holds the lock, or a file is corrupt.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot use {self.directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"{self.directory} is in use by another witness") from None
        self._lock_fd = fd
        try:
            for path in sorted(self.directory.iterdir()):
                if path.name.startswith(TMP_PREFIX):
                    path.unlink()  # a write that never reached its rename: never answered
                elif path.name.endswith(STATE_SUFFIX):
                    self._load(path)
        except OSError as exc:
            self.close()
            raise StateError(f"cannot read {self.directory}: {exc.strerror}") from None
        except StateError:
            self.close()
            raise

    def _load(self, path: Path) -> None:
        try:
            state = LogState.decode(path.read_bytes())
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        except FormatError as exc:
            raise StateError(f"{path} is corrupt ({exc}): refusing to start") from None
        if state_file_name(state.origin) != path.name:
            raise StateError(f"{path} holds the state of {state.origin!r}: refusing to start")
        self.states[state.origin] = state

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def save(self, state: LogState) -> None:
        """Write ``state`` durably, replacing the origin's previous one.

        Raises:
            OSError: the write failed; the previous state remains in memory.
        """
        name = state_file_name(state.origin)
        tmp = self.directory / f"{TMP_PREFIX}{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = memoryview(state.encode())
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.states[state.origin] = state

    def save_evidence(self, origin: str, note: bytes) -> Path:
        """Keep a signed note that proves the log forked, once per note."""
        folder = self.directory / "evidence"
        folder.mkdir(mode=0o700, exist_ok=True)
        digest = hashlib.sha256(note).hexdigest()[:16]
        path = folder / f"{state_file_name(origin).removesuffix(STATE_SUFFIX)}-{digest}.note"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path
        try:
            os.write(fd, note)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes


class WitnessService:
    """``Witness`` + ``StateStore`` + one lock per origin: the HTTP handler's
    whole logic, testable without sockets. ``clock`` gives POSIX seconds."""

    def __init__(
        self, witness: Witness, store: StateStore, clock: Callable[[], float] = time.time
    ) -> None:
        for origin in witness.logs:
            if len(state_file_name(origin)) > MAX_FILE_NAME:
                raise StateError(f"log origin {origin[:40]!r}... is too long for a state file")
        self.witness, self.store, self.clock = witness, store, clock
        self._locks = {origin: threading.Lock() for origin in witness.logs}
        self._following: set[str] = set()  # origins cosigned since start

    def add_checkpoint(self, body: bytes) -> Response:
        submission = self.witness.check(body)
        if isinstance(submission, Refusal):
            return self._refused(submission, None)
        origin = submission.checkpoint.origin
        with self._locks[origin]:
            decision = self.witness.decide(
                submission, self.store.states.get(origin), int(self.clock())
            )
            if isinstance(decision, Refusal):
                return self._refused(decision, origin)
            assert isinstance(decision, Cosigned)
            try:
                self.store.save(decision.state)
            except OSError as exc:
                log.error("cannot persist the state of %r: %s: not cosigning", origin, exc)
                return Response(500, "text/plain; charset=utf-8", b"cannot persist state\n")
        # one line per log and start at INFO, then DEBUG: a log asks every second
        level = logging.DEBUG if origin in self._following else logging.INFO
        self._following.add(origin)
        log.log(level, "cosigned %r size %d", origin, decision.state.size)
        return Response(200, "text/plain; charset=utf-8", decision.body)

    def _refused(self, refusal: Refusal, origin: str | None) -> Response:
        detail = refusal.body.decode("utf-8", "replace").strip()
        log.warning("refused %d %s: %s", refusal.status, refusal.reason, detail[:200])
        if refusal.evidence is not None and origin is not None:
            try:
                path = self.store.save_evidence(origin, refusal.evidence)
                log.warning("log %r forked: evidence kept in %s", origin, path)
            except OSError as exc:
                log.error("cannot keep evidence of a fork of %r: %s", origin, exc)
        return Response(refusal.status, refusal.content_type, refusal.body)

    def checkpoint(self, origin: str) -> Response:
        """The last checkpoint cosigned for ``origin``, with the cosignature."""
        state = self.store.states.get(origin)
        if state is None or origin not in self.witness.logs:
            return Response(404, "text/plain; charset=utf-8", b"no checkpoint for this origin\n")
        return Response(200, "text/plain; charset=utf-8", state.note + state.cosignature)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as C2SP tlog-witness recommends
    timeout = 30  # an idle or slow connection is closed
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK
    server: WitnessHTTPServer

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length", "")
        if "Transfer-Encoding" in self.headers or not length.isdigit() or not length.isascii():
            self.close_connection = True
            self._answer(Response(411, "text/plain; charset=utf-8", b"Content-Length needed\n"))
            return
        if int(length) > MAX_BODY:
            self.close_connection = True
            message = b"request body is larger than %d bytes\n" % MAX_BODY
            self._answer(Response(413, "text/plain; charset=utf-8", message))
            return
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self.close_connection = True
            return
        if urllib.parse.urlsplit(self.path).path != "/add-checkpoint":
            self._answer(Response(404, "text/plain; charset=utf-8", b"not found\n"))
            return
        self._answer(self.server.service.add_checkpoint(body))

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        if parts.path != "/checkpoint" or len(query.get("origin", [])) != 1:
            self._answer(Response(404, "text/plain; charset=utf-8", b"not found\n"))
            return
        self._answer(self.server.service.checkpoint(query["origin"][0]))

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class WitnessHTTPServer(ThreadingHTTPServer):
    """Serves ``POST /add-checkpoint`` and ``GET /checkpoint?origin=O``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: WitnessService) -> None:
        self.service = service
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up is routine: one line; anything else is a bug."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.info("connection from %s: %s", client_address, error)
        else:
            log.exception("internal error serving %s", client_address)
