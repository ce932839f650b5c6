"""The prover rules docs/PROTOCOL.md states exactly: the tree height of §2.5 and
the user token of §11.3. A verifier cannot check either, so these tests hold the
code to the text."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from prover.ledger import Ledger
from prover.periods import SaltPeriod
from prover.sizing import height_for
from prover.tokens import check_user_token, user_token

PERIOD = SaltPeriod(1, 0, bytes(range(32)))


def documented_height(holders: int) -> int:
    """§2.5: the smallest h >= 4 with 2**h >= n + floor(n / 32) + 16."""
    h = 4
    while 2**h < holders + holders // 32 + 16:
        h += 1
    return h


@given(st.integers(0, 2**31))
def test_height_is_the_documented_one(holders: int) -> None:
    assert height_for(holders) == documented_height(holders)


def test_height_examples_of_the_protocol() -> None:
    assert [height_for(n) for n in (0, 1, 16, 17, 1_000_000)] == [4, 5, 5, 6, 20]


def test_tree_grows_when_the_period_runs_out_of_slots_not_holders() -> None:
    """§2.5: a slot released within a period is not handed out again; the arrival
    that finds no slot left rebuilds the tree at max(h + 1, height(holders)).
    The next period starts again from the holders."""
    ledger = Ledger.build(PERIOD, ["BTC"], [("u0", "BTC", 1)])
    assert ledger.roots()[0].height == 5  # 32 slots, 1 taken
    for i in range(1, 32):  # 31 users come and go: every slot handed out once
        ledger.stage(f"u{i}", "BTC", 1)
        ledger.close_epoch()
        ledger.stage(f"u{i}", "BTC", 0)
        ledger.close_epoch()
    assert ledger.roots()[0].height == 5
    ledger.stage("late", "BTC", 1)  # two holders, no slot left in the order
    ledger.close_epoch()
    assert ledger.roots()[0].height == 6
    later = Ledger.build(
        SaltPeriod(2, 0, bytes(32)), ["BTC"], [("u0", "BTC", 1), ("late", "BTC", 1)]
    )
    assert later.roots()[0].height == 5


def test_token_is_hmac_keyed_with_the_decoded_secret() -> None:
    """§11.3: lowercase hex(HMAC-SHA256(key = bytes.fromhex(proof_secret), UTF-8 user id))."""
    secret = bytes(range(32)).hex()
    token = "6eefad2bed97b6d93ee663d67a44b46016b3d79dcad54ada39b61a1d14874d1b"
    assert user_token(secret, "alice") == token  # the example of §11.3
    expected = hmac.new(bytes(range(32)), "ålice".encode(), hashlib.sha256).hexdigest()
    assert user_token(secret, "ålice") == expected
    assert hmac.new(secret.encode(), b"alice", hashlib.sha256).hexdigest() != token
    assert check_user_token(secret, "alice", token)
    assert not check_user_token(secret, "alice", token.upper())  # compared as text
    assert not check_user_token("", "alice", user_token("", "alice"))  # no secret: no token
