"""The log writer's lease (storage/lease.py), on SQLite and PostgreSQL: one
holder at a time, a takeover only once it expired and with a new token, and
an append under a stale token writes nothing. Two coordinators in two
threads, each appending whenever it believes it holds the lease, never
both append: the log is one line of epochs."""

from __future__ import annotations

import threading
import time

import pytest

from storage.errors import FencedError, InvalidInputError
from storage.lease import Fence
from storage.store import Store
from tests.storage.conftest import body, sign

LOG = "log"


def append(store: Store, number: int, fence: Fence | None) -> bytes:
    leaf = number.to_bytes(8, "big")
    return store.append_epoch(number, leaf, body(leaf), sign, created_ms=number, fence=fence)


def test_one_holder_until_it_expires(store: Store) -> None:
    a = store.acquire_lease(LOG, "coord-a", now_ms=1_000, ttl_ms=500)
    assert a == Fence(LOG, 1)
    assert store.acquire_lease(LOG, "coord-b", now_ms=1_499, ttl_ms=500) is None
    assert store.acquire_lease(LOG, "coord-a", now_ms=1_400, ttl_ms=500) == a  # extended
    assert store.acquire_lease(LOG, "coord-b", now_ms=1_899, ttl_ms=500) is None
    b = store.acquire_lease(LOG, "coord-b", now_ms=1_900, ttl_ms=500)
    assert b == Fence(LOG, 2)  # taken over: a new token
    assert not store.renew_lease(a, "coord-a", now_ms=1_950, ttl_ms=500)
    assert store.renew_lease(b, "coord-b", now_ms=1_950, ttl_ms=500)
    store.release_lease(b, "coord-b")
    assert store.acquire_lease(LOG, "coord-a", now_ms=2_000, ttl_ms=500) == Fence(LOG, 3)
    with pytest.raises(InvalidInputError, match="holder"):
        store.acquire_lease(LOG, "", now_ms=0, ttl_ms=1)


def test_a_stale_token_appends_nothing(store: Store) -> None:
    a = store.acquire_lease(LOG, "coord-a", now_ms=0, ttl_ms=100)
    assert a is not None
    append(store, 0, a)
    b = store.acquire_lease(LOG, "coord-b", now_ms=200, ttl_ms=100)  # a paused past its lease
    assert b is not None
    with pytest.raises(FencedError, match="token 1 is stale"):
        append(store, 1, a)  # a wakes up: refused, nothing written
    assert store.log_size() == 1
    append(store, 1, b)
    with pytest.raises(FencedError):
        append(store, 2, Fence("other-log", 1))
    assert store.log_size() == 2


def test_two_coordinators_never_both_append(store: Store) -> None:
    """Two threads, each a coordinator appending whenever it holds the
    lease. Each in turn pauses without renewing (as SIGSTOP would) until
    the other has taken the lease over, then wakes up and appends with its
    old token: refused. Every epoch of the log was appended by the holder
    of the current token, and the log is one line of epochs."""
    appended: dict[int, str] = {}
    stale: list[str] = []
    took_over = {"coord-a": threading.Event(), "coord-b": threading.Event()}
    lock = threading.Lock()

    def now() -> int:
        return time.monotonic_ns() // 1_000_000

    def attempt(name: str, fence: Fence) -> bool:
        """Append the next epoch under ``fence``; False if fenced off."""
        with lock:  # the log size and the append as one step of this thread
            number = store.log_size()
            try:
                append(store, number, fence)
            except FencedError:
                return False
            appended[number] = f"{name}:{fence.token}"
            return True

    def coordinator(name: str, other: str) -> None:
        for turn in range(3):
            while (fence := store.acquire_lease(LOG, name, now(), ttl_ms=100)) is None:
                time.sleep(0.002)
            took_over[name].set()
            for _ in range(5):
                if not attempt(name, fence):
                    break  # the lease expired mid-way and was taken over
            if name == "coord-b" and turn == 2:
                return  # the last one: nobody takes over again
            took_over[other].clear()
            took_over[other].wait(timeout=10)  # paused: the other takes over
            if not attempt(name, fence):  # awake, with its old token
                stale.append(name)

    threads = [
        threading.Thread(target=coordinator, args=("coord-a", "coord-b")),
        threading.Thread(target=coordinator, args=("coord-b", "coord-a")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(appended) == list(range(store.log_size()))
    holders = list(appended.values())
    assert {h.split(":")[0] for h in holders} == {"coord-a", "coord-b"}
    tokens = [int(h.split(":")[1]) for h in holders]
    assert tokens == sorted(tokens)  # each append under the newest token
    assert sorted(stale) == ["coord-a"] * 3 + ["coord-b"] * 2  # every wake-up refused
