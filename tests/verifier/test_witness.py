"""The witness's sans-I/O core (C2SP tlog-witness add-checkpoint; PROTOCOL §12.2):
every answer it can give, from submissions built on an in-memory log."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from tests.verifier.fakelog import KEY, VKEY, FakeLog
from verifier import rfc9162
from verifier.checkpoint import Checkpoint, sign_note, verifier_key_for
from verifier.cosignature import cosigned_message, verify_cosignatures, witness_key_for
from verifier.errors import FormatError
from verifier.witness import (
    MAX_BODY,
    SIZE_CONTENT_TYPE,
    Cosigned,
    LogState,
    Refusal,
    Submission,
    Witness,
    format_signer_key,
    parse_request,
    parse_signer_key,
)

WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes([42]) * 32)
NAME = "witness.example/w1"
NOW = 1_790_000_000


def make_log(size: int, fork_at: int | None = None, origin: str | None = None) -> FakeLog:
    """A log of ``size`` leaves; with ``fork_at``, leaves from there on differ."""
    log = FakeLog() if origin is None else FakeLog(KEY, origin)
    for i in range(size):
        forked = fork_at is not None and i >= fork_at
        log.hashes.append(rfc9162.leaf_hash(b"%s %d" % (b"fork" if forked else b"leaf", i)))
    return log


HONEST = make_log(40)
FORK = make_log(40, fork_at=10)


def body(log: FakeLog, old: int, size: int, proof: list[bytes] | None = None) -> bytes:
    if proof is None:
        proof = rfc9162.consistency_proof(log.hashes, old, size)
    lines = b"".join(base64.b64encode(h) + b"\n" for h in proof)
    return b"old %d\n" % old + lines + b"\n" + log.checkpoint(size)


def witness(*keys: object) -> Witness:
    return Witness(NAME, WITNESS_KEY, keys or [VKEY])  # type: ignore[arg-type]


def submit(w: Witness, data: bytes, state: LogState | None, now: int = NOW) -> Cosigned | Refusal:
    checked = w.check(data)
    return checked if isinstance(checked, Refusal) else w.decide(checked, state, now)


def cosigned(w: Witness, data: bytes, state: LogState | None, now: int = NOW) -> LogState:
    decision = submit(w, data, state, now)
    assert isinstance(decision, Cosigned), decision
    return decision.state


def refused(decision: Cosigned | Refusal, status: int, reason: str) -> Refusal:
    assert isinstance(decision, Refusal), decision
    assert (decision.status, decision.reason) == (status, reason), decision
    return decision


def test_first_contact_then_growth_each_cosignature_verifies() -> None:
    w = witness()
    state = None
    for old, size in ((0, 5), (5, 5), (5, 13), (13, 16), (16, 40)):
        decision = submit(w, body(HONEST, old, size), state, NOW + size)
        assert isinstance(decision, Cosigned)
        state = decision.state
        assert (state.origin, state.size) == (HONEST.origin, size)
        assert state.root == rfc9162.root_from_leaf_hashes(HONEST.hashes[:size])
        assert state.note == HONEST.checkpoint(size) and decision.body == state.cosignature
        (cosignature,) = verify_cosignatures(state.note + decision.body, [w.key], 1)
        assert cosignature.timestamp == state.timestamp == NOW + size


def test_cosignature_is_the_c2sp_message_signed_by_the_witness_key() -> None:
    state = cosigned(witness(), body(HONEST, 0, 3), None)
    raw = base64.b64decode(state.cosignature.decode().split(" ")[2])
    key = witness_key_for(NAME, WITNESS_KEY.public_key())
    assert raw[:4] == key.key_id.to_bytes(4, "big")
    assert raw[4:12] == NOW.to_bytes(8, "big")
    root = rfc9162.root_from_leaf_hashes(HONEST.hashes[:3])
    message = cosigned_message(Checkpoint(HONEST.origin, 3, root).to_note_body(), NOW)
    assert message.startswith(b"cosignature/v1\ntime %d\n%s\n3\n" % (NOW, HONEST.origin.encode()))
    WITNESS_KEY.public_key().verify(raw[12:], message)


def test_same_size_same_root_is_cosigned_again_with_a_later_time() -> None:
    w = witness()
    first = cosigned(w, body(HONEST, 0, 7), None)
    again = cosigned(w, body(HONEST, 7, 7), first, NOW + 60)
    assert (again.size, again.root, again.timestamp) == (7, first.root, NOW + 60)


def test_a_clock_stepped_back_never_dates_a_cosignature_earlier() -> None:
    w = witness()
    first = cosigned(w, body(HONEST, 0, 7), None, NOW)
    later = cosigned(w, body(HONEST, 7, 9), first, NOW - 3600)
    assert later.timestamp == NOW
    (c,) = verify_cosignatures(later.note + later.cosignature, [w.key], 1)
    assert c.timestamp == NOW


def test_same_size_different_root_is_a_conflict_with_evidence() -> None:
    w = witness()
    state = cosigned(w, body(HONEST, 0, 20), None)
    refusal = refused(submit(w, body(FORK, 20, 20), state), 409, "root-conflict")
    assert refusal.evidence == FORK.checkpoint(20)
    assert refusal.content_type != SIZE_CONTENT_TYPE  # not a size a client should retry with


def test_a_fork_at_a_larger_size_fails_the_consistency_proof() -> None:
    w = witness()
    state = cosigned(w, body(HONEST, 0, 20), None)
    refusal = refused(submit(w, body(FORK, 20, 30), state), 422, "bad-proof")
    assert refusal.evidence is None
    # the honest proof does not make the fork's checkpoint consistent either
    proof = rfc9162.consistency_proof(HONEST.hashes, 20, 30)
    refused(submit(w, body(FORK, 20, 30, proof), state), 422, "bad-proof")
    # nor does any proof with the fork's common prefix: the state is the honest 20
    refused(submit(w, body(FORK, 8, 30), state), 409, "stale-old-size")


def test_the_first_checkpoint_seen_wins() -> None:
    """Before any state, a fork is as good as the honest log: afterwards, only
    its extensions are cosigned."""
    w = witness()
    state = cosigned(w, body(FORK, 0, 12), None)
    refused(submit(w, body(HONEST, 12, 20), state), 422, "bad-proof")
    assert cosigned(w, body(FORK, 12, 20), state).size == 20


def test_stale_old_size_answers_the_witness_size() -> None:
    w = witness()
    refusal = refused(submit(w, body(HONEST, 3, 8), None), 409, "stale-old-size")
    assert (refusal.body, refusal.content_type) == (b"0\n", "text/x.tlog.size")
    state = cosigned(w, body(HONEST, 0, 8), None)
    for old in (0, 5, 9):
        size = max(old, 10)
        refusal = refused(submit(w, body(HONEST, old, size), state), 409, "stale-old-size")
        assert (refusal.body, refusal.content_type) == (b"8\n", SIZE_CONTENT_TYPE)


def test_old_size_above_the_checkpoint_is_a_bad_request() -> None:
    w = witness()
    state = cosigned(w, body(HONEST, 0, 8), None)
    refused(submit(w, body(HONEST, 9, 8, []), state), 400, "old-size-too-large")


def test_proof_must_be_empty_from_zero_and_at_equal_sizes() -> None:
    w = witness()
    junk = [bytes(32)]
    refused(submit(w, body(HONEST, 0, 8, junk), None), 422, "bad-proof")
    state = cosigned(w, body(HONEST, 0, 8), None)
    refused(submit(w, body(HONEST, 8, 8, junk), state), 422, "bad-proof")
    short = rfc9162.consistency_proof(HONEST.hashes, 8, 13)[:-1]
    refused(submit(w, body(HONEST, 8, 13, short), state), 422, "bad-proof")


def test_an_empty_log_is_cosigned_only_with_the_empty_root() -> None:
    w = witness()
    state = cosigned(w, body(HONEST, 0, 0), None)
    assert (state.size, state.root) == (0, rfc9162.EMPTY_ROOT)
    bad = Checkpoint(HONEST.origin, 0, bytes(32)).to_note_body()
    data = b"old 0\n\n" + sign_note(bad, HONEST.origin, KEY)
    refused(submit(w, data, None), 409, "root-conflict")


def test_unknown_origin_is_404() -> None:
    other = make_log(5, origin="example.com/other")
    refused(submit(witness(), body(other, 0, 5), None), 404, "unknown-origin")


def test_a_signature_by_no_trusted_key_is_403() -> None:
    impostor = FakeLog(Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32))
    impostor.hashes = HONEST.hashes
    refused(submit(witness(), body(impostor, 0, 5), None), 403, "untrusted-signature")
    # a trusted key's line whose signature does not verify
    note = HONEST.checkpoint(5)
    raw = bytearray(base64.b64decode(note.decode().split(" ")[-1]))
    raw[-1] ^= 1
    forged = note[: note.rindex(b" ") + 1] + base64.b64encode(bytes(raw)) + b"\n"
    refused(submit(witness(), b"old 0\n\n" + forged, None), 403, "untrusted-signature")


def test_untrusted_signatures_are_ignored_and_a_rotated_key_is_accepted() -> None:
    new_key = Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32)
    rotated = verifier_key_for(HONEST.origin, new_key.public_key())
    body_ = Checkpoint(HONEST.origin, 3, rfc9162.root_from_leaf_hashes(HONEST.hashes[:3]))
    stranger = Ed25519PrivateKey.from_private_bytes(bytes([6]) * 32)
    note = sign_note(body_.to_note_body(), HONEST.origin, stranger, new_key)
    assert cosigned(witness(VKEY, rotated), b"old 0\n\n" + note, None).size == 3
    refused(submit(witness(VKEY), b"old 0\n\n" + note, None), 403, "untrusted-signature")


def test_one_witness_many_logs() -> None:
    other = make_log(9, origin="example.com/other")
    w = witness(VKEY, verifier_key_for(other.origin, KEY.public_key()))
    a = cosigned(w, body(HONEST, 0, 20), None)
    b = cosigned(w, body(other, 0, 4), None)
    assert (a.origin, a.size, b.origin, b.size) == (HONEST.origin, 20, other.origin, 4)
    with pytest.raises(ValueError, match="state of"):
        w.decide(_checked(w, body(other, 4, 9)), a, NOW)


def _checked(w: Witness, data: bytes) -> Submission:
    submission = w.check(data)
    assert isinstance(submission, Submission)
    return submission


def test_extension_lines_are_cosigned_with_the_body() -> None:
    root = rfc9162.root_from_leaf_hashes(HONEST.hashes[:2])
    text = Checkpoint(HONEST.origin, 2, root).to_note_body() + b"ext line\n"
    state = cosigned(witness(), b"old 0\n\n" + sign_note(text, HONEST.origin, KEY), None)
    assert verify_cosignatures(state.note + state.cosignature, [witness().key], 1)
    empty_ext = Checkpoint(HONEST.origin, 2, root).to_note_body() + b"\n"
    # an empty extension line would make the body end in a blank line: not a note
    refused(
        submit(witness(), b"old 0\n\n" + sign_note(empty_ext, "x", KEY), None), 400, "malformed"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"old 01\n\n", "old <size>"),
        (b"old -1\n\n", "old <size>"),
        (b"old 1 \n\n", "old <size>"),
        (b"old 18446744073709551616\n\n", "old <size>"),
        (b"Old 1\n\n", "old <size>"),
        (b"old 1", "old <size>"),
        (b"old 1\n", "no empty line"),
        (b"old 1\nAAAA\n\n", "32-byte"),
        (b"old 1\n" + base64.b64encode(bytes(32))[:-2] + b"B=\n\n", "canonical"),
        (b"old 1\n" + b"\xff" * 44 + b"\n\n", "not base64"),
        (b"old 1\n" + (base64.b64encode(bytes(32)) + b"\n") * 64 + b"\n", "more than 63"),
        (b"old 1\n\n" + b"x" * MAX_BODY, "larger than"),
    ],
)
def test_parse_request_is_strict(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_request(data)


def test_sixty_three_proof_lines_parse() -> None:
    request = parse_request(b"old 1\n" + (base64.b64encode(bytes(32)) + b"\n") * 63 + b"\nn")
    assert (request.old_size, len(request.proof), request.note) == (1, 63, b"n")


def test_malformed_bodies_and_notes_are_400_and_too_large_is_413() -> None:
    w = witness()
    refused(submit(w, b"old 0\n\n" + HONEST.checkpoint(5)[:-1], None), 400, "malformed")
    refused(submit(w, b"old 0\n\nno signatures\n", None), 400, "malformed")
    refused(submit(w, b"old 0\nAAAA\n\n" + HONEST.checkpoint(5), None), 400, "malformed")
    note = sign_note(b"origin\n5\n", "origin", KEY)  # no root line
    refused(submit(w, b"old 0\n\n" + note, None), 400, "malformed")
    refused(submit(w, b"old 0\n\n" + b"x" * MAX_BODY, None), 413, "too-large")


def test_state_encoding_round_trips_and_is_checked() -> None:
    state = cosigned(witness(), body(HONEST, 0, 11), None)
    data = state.encode()
    assert data.startswith(b"witness-state/v1\n\xe2\x80\x94 " + NAME.encode())
    assert LogState.decode(data) == state
    for bad, message in [
        (b"", "witness-state/v1"),
        (b"witness-state/v1\n", "no cosignature line"),
        (data.replace(b"\xe2\x80\x94 ", b"- ", 1), "cosignature line"),
        (data[:17] + state.cosignature[:-10] + b"\n" + state.note, "76 bytes|base64"),
        (data[:-1], "newline"),
    ]:
        with pytest.raises(FormatError, match=message):
            LogState.decode(bad)


def test_signer_key_file_text() -> None:
    text = format_signer_key(NAME, WITNESS_KEY)
    key = witness_key_for(NAME, WITNESS_KEY.public_key())
    assert text == (
        f"PRIVATE+KEY+{NAME}+{key.key_id:08x}+"
        + base64.b64encode(b"\x04" + bytes([42]) * 32).decode()
    )
    name, private_key = parse_signer_key(text + "\n")
    assert name == NAME and private_key.private_bytes_raw() == bytes([42]) * 32
    wrong_id = text.replace(f"+{key.key_id:08x}+", "+00000000+")
    log_alg = text.replace(text.rsplit("+", 1)[1], base64.b64encode(b"\x01" + bytes(32)).decode())
    for bad, message in [
        (wrong_id, "does not match"),
        (log_alg, "0x04"),
        ("PRIVATE+KEY+a b+00000000+AAAA", "key name"),
        ("PUBLIC+KEY+" + text[12:], "PRIVATE"),
        (text + "+x", "base64"),
    ]:
        with pytest.raises(FormatError, match=message):
            parse_signer_key(bad)


# Property tests: the parser and check() answer every input without raising.

_HASH_LINE = st.binary(min_size=32, max_size=32).map(lambda h: base64.b64encode(h) + b"\n")


@given(
    old=st.integers(0, 2**64 - 1),
    proof=st.lists(_HASH_LINE, max_size=63),
    note=st.binary(max_size=200),
)
def test_parse_request_reads_back_what_a_client_writes(
    old: int, proof: list[bytes], note: bytes
) -> None:
    request = parse_request(b"old %d\n" % old + b"".join(proof) + b"\n" + note)
    assert request.old_size == old and request.note == note
    assert [base64.b64encode(h) + b"\n" for h in request.proof] == proof


@given(st.binary(max_size=300))
def test_check_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, b"old 0\n\n" + data, body(HONEST, 3, 5) + data):
        assert isinstance(witness().check(candidate), Submission | Refusal)


@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_corrupted_request_is_never_cosigned_for_another_checkpoint(
    position: int, byte: int
) -> None:
    w = witness()
    state = cosigned(w, body(HONEST, 0, 13), None)
    data = bytearray(body(HONEST, 13, 29))
    data[position % len(data)] = byte
    decision = submit(w, bytes(data), state)
    if isinstance(decision, Cosigned):  # e.g. a corrupted signature line by no trusted key
        assert decision.state.size == 29
        assert decision.state.root == rfc9162.root_from_leaf_hashes(HONEST.hashes[:29])
