"""One witness's submissions, in a thread of its own with one keep-alive
HTTP/1.1 connection (C2SP tlog-witness ``add-checkpoint``; the pure part is
prover/witness_protocol.py; prover/witnesses.py runs one per witness).

Invariants: one submission at a time, always of the newest checkpoint
offered (``offer`` replaces one not yet started); after a failure, nothing is
sent before ``WitnessState.retry_delay`` has passed; every submission's
outcome is reported, from this thread, through ``report``.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prover.witness_protocol import (
    MAX_ANSWER_BYTES,
    Cosigned,
    Failed,
    Outcome,
    WitnessEndpoint,
    WitnessState,
    read_answer,
    request_body,
)

__all__ = ["REQUEST_TIMEOUT", "Job", "Report", "WitnessClient"]

REQUEST_TIMEOUT = 10.0  # seconds a witness has to connect and answer one submission


@dataclass(frozen=True, slots=True)
class Job:
    """Epoch ``epoch``'s signed checkpoint, to submit."""

    epoch: int
    note: bytes
    body: bytes  # the note's body: what a cosignature signs
    consistency: tuple[bytes, ...]  # from size ``epoch`` to ``epoch + 1``


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one submission by the witness ``index``: its verified
    cosignature, or the ``reason`` it failed and the ``retry`` delay."""

    index: int
    epoch: int
    line: bytes | None  # the verified cosignature, if any
    failing: int
    latency: float
    reason: str
    retry: float


class WitnessClient:
    """One witness's thread and connection (module docstring)."""

    def __init__(
        self,
        index: int,
        endpoint: WitnessEndpoint,
        state: WitnessState,
        proof: Callable[[int, int], Sequence[bytes]],
        report: Callable[[Report], None],
    ) -> None:
        self.index, self.endpoint, self._state = index, endpoint, state
        self._proof, self._report = proof, report
        self._cond = threading.Condition()
        self._job: Job | None = None
        self._stopping = False
        self._conn: http.client.HTTPConnection | None = None
        url = urllib.parse.urlsplit(endpoint.url)
        self._https, self._host, self._port = url.scheme == "https", url.hostname, url.port
        self._path = url.path + "/add-checkpoint"
        self._thread = threading.Thread(target=self._run, name=f"witness-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, job: Job) -> None:
        """Make ``job`` the next submission, replacing one not yet started."""
        with self._cond:
            self._job = job
            self._cond.notify()

    def stop(self) -> None:
        """End the thread; a request under way is cut."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _next(self, retry_at: float) -> Job | None:
        """The job to submit once ``retry_at`` (monotonic) has passed; None: stop."""
        with self._cond:
            while not self._stopping:
                job, wait = self._job, None
                if job is not None and self._state.wants(job.epoch + 1):
                    wait = retry_at - time.monotonic()
                    if wait <= 0:
                        return job
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        retry_at = 0.0
        try:
            while (job := self._next(retry_at)) is not None:
                old, new = self._state.old_size(job.epoch + 1), job.epoch + 1
                started = time.perf_counter()
                outcome = self._submit(job, old)
                latency = time.perf_counter() - started
                self._state, reason = self._state.after(outcome, old, new)
                retry = self._state.retry_delay() if reason else 0.0
                retry_at = time.monotonic() + retry
                line = outcome.lines if isinstance(outcome, Cosigned) else None
                failing = self._state.failures
                self._report(Report(self.index, job.epoch, line, failing, latency, reason, retry))
        finally:
            self._close()

    def _submit(self, job: Job, old: int) -> Outcome:
        new = job.epoch + 1
        try:
            if old in (0, new):
                proof: Sequence[bytes] = ()
            elif old == job.epoch:
                proof = job.consistency
            else:
                proof = self._proof(old, new)
            status, content_type, answer = self._post(request_body(old, proof, job.note))
        except Exception as exc:  # the thread must go on: reported as a failure
            return Failed(f"{type(exc).__name__}: {exc}")
        return read_answer(self.endpoint.key, job.body, status, content_type, answer)

    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        """POST ``body`` on the kept-alive connection; once more on a new one if
        the witness had closed the old one meanwhile."""
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            try:
                conn.request("POST", self._path, body, {"Content-Type": "text/plain"})
                response = conn.getresponse()
                answer = response.read(MAX_ANSWER_BYTES + 1)
                if response.will_close or len(answer) > MAX_ANSWER_BYTES:
                    self._close()
                if len(answer) > MAX_ANSWER_BYTES:
                    raise http.client.HTTPException(f"answer over {MAX_ANSWER_BYTES} bytes")
                return response.status, response.getheader("Content-Type", ""), answer
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._close()
                if not reused or attempt == 2:
                    raise
            except BaseException:
                self._close()
                raise
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        with self._cond:
            if self._stopping:
                raise ConnectionAbortedError("stopping")
            if self._https:
                context = ssl.create_default_context()
                self._conn = http.client.HTTPSConnection(
                    self._host or "", self._port, timeout=REQUEST_TIMEOUT, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host or "", self._port, timeout=REQUEST_TIMEOUT
                )
            return self._conn

    def _close(self) -> None:
        with self._cond:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
