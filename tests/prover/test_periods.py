"""Salt periods: derivations are keyed, stable and distinct (docs/PROTOCOL.md §2.5)."""

import numpy as np

from prover.periods import SaltPeriod, SlotAllocator


def test_derivations_are_stable_and_keyed() -> None:
    p = SaltPeriod(1, 0, bytes(32))
    q = SaltPeriod(2, 0, bytes([1]) * 32)
    assert p.salt("alice") == p.salt("alice") != p.salt("bob")
    assert p.salt("alice") != q.salt("alice")
    assert p.commitment("alice") != q.commitment("alice")
    assert p.padding_key("BTC") != p.padding_key("ETH")
    assert len(SaltPeriod.fresh(3, 0).secret) == 32


def test_slot_order_is_a_permutation_that_depends_on_secret_asset_and_height() -> None:
    p = SaltPeriod(1, 0, bytes(32))
    order = p.slot_order("BTC", 6)
    assert sorted(order.tolist()) == list(range(64))
    assert np.array_equal(order, p.slot_order("BTC", 6))
    assert not np.array_equal(order, p.slot_order("ETH", 6))
    assert not np.array_equal(order, SaltPeriod(2, 0, bytes([9]) * 32).slot_order("BTC", 6))


def test_allocator_hands_out_each_slot_once() -> None:
    alloc = SlotAllocator(SaltPeriod(1, 0, bytes(32)).slot_order("BTC", 3))
    a = alloc.take(5)
    b = alloc.take(3)
    assert a is not None and b is not None
    assert sorted([*a.tolist(), *b.tolist()]) == list(range(8))
    assert alloc.remaining == 0 and alloc.take(1) is None
