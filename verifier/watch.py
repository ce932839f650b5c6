"""``solvency-verify watch``: the auditor's loop over the root stream, I/O only.

Subscribe to ``/roots`` from the last verified size, hand each frame, refusal
and clock tick to the pure ``verifier.auditor.Auditor`` (what is a violation,
what is evidence, when silence alarms), and carry out its decisions: keep the
state in ``--state``, write evidence, print (``--json``: one event per line),
and reconnect (websockets' reconnecting ``connect``, with its jittered
backoff). Silence is measured apart from the connection, on
the monotonic clock, so a prover that is unreachable, refuses, or accepts and
says nothing alarms alike.

``Follower`` is that loop without the watch's report of each epoch;
``verifier.relay`` follows its upstream with it too. It asks for what its
``Subscription`` names (every asset, chosen assets, or checkpoints only) in
every URL it connects to, and the Auditor refuses frames of another kind.
With ``--binary`` it offers the ``solvency-msgpack`` subprotocol (msgspec,
the ``binary`` extra, is imported then only): a connection that selected it
is read as MessagePack, one that did not (a server without it) as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from verifier.attestation import parse_attester_keys
from verifier.audit import AuditState, restore
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
    SilenceAlarm,
    Stop,
    Tick,
    Verified,
)
from verifier.checkpoint import VerifierKey
from verifier.display import epoch_event
from verifier.errors import FormatError, SolvencyError
from verifier.hashing import printable_id
from verifier.inputs import OperationalError, UsageError, load_key, load_witnesses, read_input
from verifier.subscription import ALL_ASSETS, Subscription

__all__ = ["Follower", "SilenceAlarm", "Watcher", "run_until_signalled", "watch"]

MAX_BACKOFF = 30.0
CLOSE_WAIT = 2.0  # seconds the server gets to answer our close when the watch ends


class Follower:
    """Connect, read frames, save state and evidence, print; the policy is the
    Auditor's. What a frame or a refusal leads to is ``on_frame``'s and
    ``on_refused``'s, a verified epoch ``_verified``'s: the subclass's to extend."""

    def __init__(
        self,
        args: argparse.Namespace,
        url: str,
        *,
        keep_going: bool,
        max_epochs: int,
        subscription: Subscription = ALL_ASSETS,
    ) -> None:
        """``args``: the options watch and relay share (``--key``, ``--origin``,
        ``--witness``, ``--quorum``, ``--attester``, ``--token``, ``--state``,
        ``--json``, ``--max-silence``, ``--binary``); ``url``: the server of
        ``/roots``; ``subscription``: what to ask it for."""
        self.url = url.rstrip("/")
        self.subscription = subscription
        self.subprotocols = [binary_subprotocol()] if getattr(args, "binary", False) else []
        key = load_key(args.key)
        origin = args.origin or key.name
        witnesses, quorum = load_witnesses(args.witness, args.quorum)
        attesters = load_attesters(getattr(args, "attester", None) or ())
        token: str | None = args.token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.state_dir = Path(args.state)
        self.as_json = args.json
        self.state_file = self.state_dir / "state.json"
        state: AuditState | None = None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.state_dir):  # writable, before any epoch
                pass
            saved = self.state_file.read_bytes() if self.state_file.exists() else None
        except OSError as exc:
            raise OperationalError(f"--state {self.state_dir}: {exc.strerror or exc}") from None
        if saved is not None:
            try:
                state = restore(saved, key, origin)
            except SolvencyError as exc:
                raise UsageError(f"{self.state_file}: {exc}") from None
        config = AuditorConfig(
            key=key,
            origin=origin,
            witnesses=witnesses,
            quorum=quorum,
            attesters=attesters,
            keep_going=keep_going,
            max_silence=args.max_silence,
            max_epochs=max_epochs,
            subscription=subscription,
        )
        self.auditor = Auditor(config, state, time.monotonic())
        # the last failure to connect, announced with the delay before the next try
        self._failure: tuple[dict[str, Any], str] = ({"event": "disconnected"}, "disconnected")
        self._warned_json = False  # said once that --binary was not selected

    @property
    def exit_code(self) -> int:
        """The status to end with now: 1 once any alarm was raised, else 0."""
        return self.auditor.exit_code

    # output

    def _say(self, doc: dict[str, Any], line: str) -> None:
        print(json.dumps(doc) if self.as_json else line, flush=True)

    def _save(self, state: AuditState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(state.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except OSError as exc:
            raise OperationalError(f"cannot save {self.state_file}: {exc.strerror}") from None

    def _evidence(self, check: str, doc: dict[str, Any]) -> str | None:
        path = self.state_dir / f"evidence-{int(time.time() * 1000)}-{check}.json"
        try:
            path.write_text(json.dumps(doc, indent=2))
        except OSError as exc:  # the alarm itself must not be lost
            self._say(
                {"event": "warning", "reason": f"cannot write {path}: {exc.strerror}"},
                f"WARNING: cannot write evidence {path}: {exc.strerror}",
            )
            return None
        return str(path)

    def _alarm(self, alarm: Alarm) -> None:
        path = self._evidence(alarm.check, dict(alarm.evidence))
        self._say(
            {"event": "violation", "check": alarm.check, "reason": alarm.reason, "evidence": path},
            f"ALARM {alarm.check}: {printable_id(alarm.reason)} (evidence in {path})",
        )

    def _verified(self, verified: Verified) -> None:
        """An epoch verified (its state saved): nothing more to do here."""

    def carry_out(self, decisions: Sequence[Decision]) -> int | None:
        """Act on the Auditor's decisions in order; an exit status to stop with, or None."""
        for d in decisions:
            if isinstance(d, SaveState):
                self._save(d.state)
            elif isinstance(d, Verified):
                self._verified(d)
            elif isinstance(d, Alarm):
                self._alarm(d)
            elif isinstance(d, RecoveredAsset):
                self._say(
                    {"event": "recovered", "asset": d.asset, "epoch": d.epoch},
                    f"RECOVERED {printable_id(d.asset)} is solvent again at epoch {d.epoch}",
                )
            elif isinstance(d, RecoveredWitnesses):
                self._say(
                    {"event": "recovered", "check": d.check, "epoch": d.epoch},
                    f"RECOVERED witnesses: a quorum cosigned epoch {d.epoch}",
                )
            elif isinstance(d, ConfigurationError):
                raise UsageError(d.message)
            elif isinstance(d, Stop):
                return d.code
        return None

    def on_frame(self, frame: str | bytes, msgpack: bool = False) -> int | None:
        """A frame of the stream, as received (in MessagePack if ``msgpack``):
        an exit status to stop with, or None."""
        return self.carry_out(self.auditor.handle(Frame(frame, time.monotonic(), msgpack)))

    def _encoding(self, subprotocol: str | None) -> bool:
        """Whether a connection that selected ``subprotocol`` is MessagePack;
        says once that the server did not select the one offered."""
        if self.subprotocols and subprotocol is None and not self._warned_json:
            self._warned_json = True
            reason = f"{self.url} did not select {self.subprotocols[0]}: following it in JSON"
            self._say({"event": "warning", "reason": reason}, f"WARNING: {printable_id(reason)}")
        return subprotocol is not None  # the only one offered

    def on_refused(self, refused: Refused) -> int | None:
        """A refused subscription: an exit status to stop with, or None to retry."""
        return self.carry_out(self.auditor.handle(refused))

    # the two loops

    async def run(self) -> int:
        """Follow the stream and watch for silence, until either ends the watch."""
        tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._alarm_on_silence())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return done.pop().result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _alarm_on_silence(self) -> int:
        while True:
            await asyncio.sleep(max(0.0, self.auditor.silence.due() - time.monotonic()))
            code = self.carry_out(self.auditor.handle(Tick(time.monotonic())))
            if code is not None:
                return code

    def _roots_url(self) -> str:
        """``/roots`` from the first epoch not yet verified, as subscribed."""
        state = self.auditor.state
        since = state.size if state else 0
        return f"{self.url}/roots?since={since}{self.subscription.query()}"

    def _connect_failed(self, exc: Exception) -> Exception | None:
        """websockets' ``process_exception``: None to retry after a backoff
        delay, or the exception that ends the watch. A refusal is the
        Auditor's to judge: 400 bad-since is evidence of a shrunken log; a
        400 bad-request refuses what this follower asks for (configuration)."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

        if isinstance(exc, InvalidURI):
            return UsageError(str(exc))
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            if status == 400 and b"bad-request" in (exc.response.body or b""):
                body = (exc.response.body or b"").decode("utf-8", "replace")
                return UsageError(f"{self.url} refused the subscription: {body.strip()}")
            state = self.auditor.state
            bad_since = status == 400 and b"bad-since" in (exc.response.body or b"")
            code = self.on_refused(Refused(status, state.size if state else 0, bad_since))
            if code is not None:
                return _Stopped(code)
            self._failure = (
                {"event": "refused", "status": status},
                (f"the prover refused the connection ({exc})"),
            )
            return None
        if isinstance(exc, (OSError, InvalidHandshake, TimeoutError)):
            self._failure = {"event": "disconnected"}, f"disconnected ({exc})"
            return None
        return exc

    @staticmethod
    def _backoff() -> Generator[float]:
        """websockets' backoff: the first delay jittered in [0, 1) s, then 1 s
        doubling up to ``MAX_BACKOFF``."""
        from websockets.client import backoff

        return backoff(initial_delay=1.0, min_delay=1.0, max_delay=MAX_BACKOFF, factor=2.0)

    def _delays(self) -> Generator[float]:
        """websockets' ``reconnect_delays``: its backoff, each delay announced
        with the failure it follows."""
        for delay in self._backoff():
            event, reason = self._failure
            self._say(
                {**event, "reason": reason, "retry_in": round(delay, 3)},
                f"{printable_id(reason)}; retrying in {delay:.1f} s",
            )
            yield delay

    async def _follow(self) -> int:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri

        connector = connect(
            self._roots_url(),
            additional_headers=self.headers,
            max_size=1 << 20,
            subprotocols=[Subprotocol(p) for p in self.subprotocols] or None,
            process_exception=self._connect_failed,
            reconnect_delays=self._delays,
        )
        # websockets backs off while connecting fails; a server that accepts
        # and closes without sending a frame is paced the same way here
        empty: Generator[float] | None = None
        try:
            async for ws in connector:
                received = False
                msgpack = self._encoding(ws.subprotocol)
                try:
                    async for frame in ws:
                        received = True
                        code = self.on_frame(frame, msgpack)
                        if code is not None:
                            # now, not when connect()'s generator is collected
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(ws.close(), CLOSE_WAIT)
                            return code
                    reason = "the prover closed the stream"
                except ConnectionClosed as exc:
                    reason = f"disconnected ({exc})"
                if received:
                    empty, delay = None, 0.0
                else:
                    empty = empty or self._backoff()
                    delay = next(empty)
                self._say(
                    {"event": "disconnected", "reason": reason, "retry_in": round(delay, 3)},
                    f"{printable_id(reason)}; reconnecting in {delay:.1f} s",
                )
                await asyncio.sleep(delay)
                # resume after the last verified epoch: the two attributes
                # websockets itself moves when it follows a redirect
                connector.uri = self._roots_url()
                connector.ws_uri = parse_uri(connector.uri)
        except _Stopped as stopped:
            return stopped.code
        raise AssertionError("unreachable: connect() iterates until an exception")


class Watcher(Follower):
    """``solvency-verify watch``: a ``Follower`` that reports each verified
    epoch, and what it did not verify of it (``verifier.display.epoch_event``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.checkpoints_only:
            if args.attester:
                raise UsageError("--attester checks records: not with --checkpoints-only")
            subscription = Subscription(checkpoints=True)
        elif args.assets is not None:
            subscription = Subscription(assets=args.assets)
        else:
            subscription = ALL_ASSETS
        super().__init__(
            args,
            args.url,
            keep_going=args.keep_going,
            max_epochs=args.max_epochs,
            subscription=subscription,
        )

    def _verified(self, verified: Verified) -> None:
        self._say(*epoch_event(verified))


class _Stopped(Exception):
    """Raised through websockets' reconnect loop when the Auditor ends the watch."""

    def __init__(self, code: int) -> None:
        super().__init__(f"watch ended with status {code}")
        self.code = code


def binary_subprotocol() -> str:
    """``solvency-msgpack``, for ``--binary``.

    Raises:
        UsageError: msgspec, which reads it, is not installed.
    """
    try:
        from verifier.stream_binary import SUBPROTOCOL
    except ImportError:
        raise UsageError(
            "--binary needs msgspec: install solvency-stream-verifier[binary]"
        ) from None
    return SUBPROTOCOL


def load_attesters(values: Sequence[str]) -> tuple[VerifierKey, ...]:
    """``--attester`` values: each a verifier key, or a file of keys one per line."""
    keys: list[VerifierKey] = []
    for value in values:
        text = value
        if "+" not in value and os.path.exists(value):
            text = read_input(value).decode("utf-8", "replace")
        try:
            keys += parse_attester_keys(text)
        except FormatError as exc:
            raise UsageError(f"--attester {value}: {exc}") from None
    return tuple(keys)


def watch(args: argparse.Namespace) -> int:
    """Watch until done, or until SIGINT/SIGTERM ends the watch cleanly."""
    return run_until_signalled(Watcher(args))


def run_until_signalled(follower: Follower) -> int:
    """``follower.run()`` until it ends, or until SIGINT/SIGTERM ends it
    cleanly with its exit status so far."""

    async def until_signalled() -> int:
        task = asyncio.create_task(follower.run())
        if threading.current_thread() is threading.main_thread():  # else: embedded, e.g. tests
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return follower.exit_code

    return asyncio.run(until_signalled())
