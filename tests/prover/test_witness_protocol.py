"""The prover's side of tlog-witness add-checkpoint without sockets: request
bodies, answers, the per-witness state, and the witnesses' configuration."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prover.config import Config, WitnessConfig, load_config
from prover.errors import ConfigError
from prover.witness_protocol import (
    MAX_CONFLICTS,
    Conflict,
    Cosigned,
    Failed,
    WitnessEndpoint,
    WitnessState,
    read_answer,
    request_body,
)
from verifier.checkpoint import Checkpoint, sign_note
from verifier.cosignature import cosign, witness_key_for
from verifier.witness import parse_request

LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
W1 = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
W2 = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
K1, K2 = witness_key_for("w1.example", W1.public_key()), witness_key_for("w2", W2.public_key())
BODY = Checkpoint("test.example/solvency", 5, bytes(32)).to_note_body()
NOTE = sign_note(BODY, "test.example/solvency", LOG_KEY)
TIME = 1_790_000_000


def test_the_request_body_is_what_a_witness_parses() -> None:
    proof = [bytes([i]) * 32 for i in range(3)]
    body = request_body(3, proof, NOTE)
    assert body.startswith(b"old 3\n" + base64.b64encode(proof[0]) + b"\n")
    request = parse_request(body)
    assert (request.old_size, list(request.proof), request.note) == (3, proof, NOTE)
    assert request_body(0, (), NOTE) == b"old 0\n\n" + NOTE
    with pytest.raises(ValueError, match="from size 0"):
        request_body(0, proof, NOTE)  # C2SP: no proof from the empty tree
    with pytest.raises(ValueError):
        request_body(1, [bytes(32)] * 64, NOTE)  # at most 63 lines


def test_a_200_counts_only_with_a_valid_cosignature_by_the_configured_key() -> None:
    mine, other = cosign(BODY, "w1.example", W1, TIME), cosign(BODY, "w2", W2, TIME)
    assert read_answer(K1, BODY, 200, "text/plain", other + mine) == Cosigned(mine)
    assert read_answer(K1, BODY, 200, "text/plain", other) == Failed(
        "200 without a cosignature by w1.example"
    )
    # a cosignature by the right key over another checkpoint
    elsewhere = cosign(
        Checkpoint("test.example/solvency", 6, bytes(32)).to_note_body(), "w1.example", W1, TIME
    )
    outcome = read_answer(K1, BODY, 200, "text/plain", elsewhere)
    assert isinstance(outcome, Failed) and "invalid cosignature" in outcome.reason
    outcome = read_answer(K1, BODY, 200, "text/plain", b"hello\n")
    assert isinstance(outcome, Failed) and "without valid signature lines" in outcome.reason


def test_refusals_are_named() -> None:
    assert read_answer(K1, BODY, 409, "text/x.tlog.size", b"12\n") == Conflict(12)
    assert read_answer(K1, BODY, 409, "text/x.tlog.size; charset=x", b"0\n") == Conflict(0)
    assert read_answer(K1, BODY, 409, "text/x.tlog.size", b"012\n") == Failed(
        "409 with a malformed size '012'"
    )
    assert read_answer(K1, BODY, 409, "text/plain", b"root differs\n") == Failed(
        "409: it holds another checkpoint of that size: root differs"
    )
    assert read_answer(K1, BODY, 422, "text/plain", b"bad proof\n") == Failed(
        "422: it refuses the consistency proof: bad proof"
    )
    assert read_answer(K1, BODY, 403, "text/plain", b"") == Failed(
        "403: it does not trust the log's signature"
    )
    assert read_answer(K1, BODY, 404, "", b"x") == Failed(
        "404: it does not know the log's origin: x"
    )
    assert read_answer(K1, BODY, 500, "", b"") == Failed("500: unexpected answer")


def test_the_state_learns_sizes_from_200s_and_409s_only() -> None:
    state = WitnessState()
    assert (state.old_size(5), state.wants(5)) == (0, True)
    # 409: the witness has size 3: resubmit at once from 3
    state, reason = state.after(Conflict(3), 0, 5)
    assert (state, reason) == (WitnessState(3, 0, 1), "")
    assert (state.old_size(5), state.wants(5)) == (3, True)
    state, reason = state.after(Cosigned(b"line"), 3, 5)
    assert (state, reason, state.wants(5), state.wants(6)) == (WitnessState(5), "", False, True)
    # a failure keeps the size and counts; the retry backs off
    state, reason = state.after(Failed("422: nope"), 5, 6)
    assert (state, reason) == (WitnessState(5, 1, 0), "422: nope")
    assert 0.25 <= state.retry_delay() <= 0.5
    failed, _ = state.after(Failed("again"), 5, 6)
    assert 0.5 <= failed.retry_delay() <= 1.0


def test_a_409_of_our_own_size_asks_for_the_same_checkpoint_once_more() -> None:
    """The witness cosigned our checkpoint but the answer was lost: it says
    its size is ours; resubmitted from that size, it compares the roots."""
    state, reason = WitnessState(4).after(Conflict(5), 4, 5)
    assert (state, reason, state.old_size(5), state.wants(5)) == (
        WitnessState(5, 0, 1),
        "",
        5,
        True,
    )
    # and if it says that size again, it holds another root: a fork
    state, reason = state.after(Conflict(5), 5, 5)
    assert state == WitnessState(5, 1, 0) and "does not extend" in reason
    assert not state.wants(5) and state.wants(6)


def test_409s_without_progress_are_failures() -> None:
    state, reason = WitnessState(4).after(Conflict(9), 4, 5)  # ahead of our log
    assert state == WitnessState(4, 1, 0) and "size 9" in reason
    state = WitnessState()
    for size in range(1, MAX_CONFLICTS):
        state, reason = state.after(Conflict(size), state.old_size(9), 9)
        assert reason == ""
    state, reason = state.after(Conflict(7), state.old_size(9), 9)
    assert reason == f"409 {MAX_CONFLICTS} times in a row" and state.failures == 1


def test_endpoints_are_checked() -> None:
    endpoint = WitnessEndpoint.parse(str(K1), "http://127.0.0.1:7380/prefix/")
    assert (endpoint.url, endpoint.name) == (
        "http://127.0.0.1:7380/prefix",
        f"w1.example+{K1.key_id:08x}",
    )
    for url, problem in [
        ("ftp://127.0.0.1", "want http"),
        ("http://", "want http"),
        ("http://127.0.0.1:99999", "out of range"),
        ("http://u:p@127.0.0.1", "user info"),
        ("http://127.0.0.1/?x=1", "no query"),
    ]:
        with pytest.raises(Exception, match=problem):
            WitnessEndpoint.parse(str(K1), url)
    with pytest.raises(Exception, match="witness key"):
        WitnessEndpoint.parse("w1+00000000+AAAA", "http://127.0.0.1")


def test_witnesses_from_toml_and_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        "witness_quorum = 1\nwitness_timeout = 0.5\n"
        f'[[witnesses]]\nkey = "{K1}"\nurl = "http://127.0.0.1:1"\n'
        f'[[witnesses]]\nkey = "{K2}"\nurl = "http://127.0.0.1:2"\n'
    )
    config = load_config(tmp_path, environ={})
    assert [e.key for e in config.witness_endpoints()] == [K1, K2]
    assert (config.quorum, config.witness_timeout) == (1, 0.5)
    env = {"SOLVENCY_WITNESSES": f"{K2}@http://127.0.0.1:3", "SOLVENCY_WITNESS_QUORUM": "-1"}
    config = load_config(tmp_path, environ=env)
    assert (
        config.witnesses == (WitnessConfig(str(K2), "http://127.0.0.1:3"),) and config.quorum == 1
    )
    env = {"SOLVENCY_WITNESSES": "", "SOLVENCY_WITNESS_QUORUM": "0"}
    assert load_config(tmp_path, environ=env).witnesses == ()
    assert Config(tmp_path).quorum == 0  # no witness: nothing to wait for


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"witnesses": (WitnessConfig(str(K1), "http://a"),), "witness_quorum": 2},
            "witness_quorum 2: want 0..1",
        ),
        ({"witness_quorum": -2}, "witness_quorum -2"),
        (
            {"witnesses": (WitnessConfig(str(K1), "http://a"), WitnessConfig(str(K1), "http://b"))},
            "configured twice",
        ),
        (
            {"witnesses": (WitnessConfig("nope", "http://a"),)},
            r"witnesses\[0\]: witness key must be",
        ),
        ({"witnesses": (WitnessConfig(str(K1), "ws://a"),)}, r"witnesses\[0\]: witness URL"),
        ({"witness_timeout": 0.0}, "witness_timeout"),
    ],
)
def test_bad_witness_configurations_are_refused(
    tmp_path: Path, changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Config(tmp_path, **changes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="SOLVENCY_WITNESSES: 'no-at-sign' is not key@url"):
        load_config(tmp_path, environ={"SOLVENCY_WITNESSES": "no-at-sign"})
