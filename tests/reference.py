"""A naive Merkle sum tree written straight from docs/PROTOCOL.md §2 (tests only).

Plain lists of (hash, sum) per level, leaves first; slow and obviously right.
``node`` can be swapped to build the trees of dishonest provers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from verifier.hashing import commitment, leaf_hash, node_hash, padding_hash
from verifier.sumtree import PathStep

Node = tuple[bytes, int]
Levels = list[list[Node]]
PADDING_KEY = bytes(range(32))


def salt(user: str) -> bytes:
    return (user.encode() * 32)[:32]


def honest_node(left: Node, right: Node) -> Node:
    return node_hash(left[0], left[1], right[0], right[1]), left[1] + right[1]


def build(
    asset: str,
    height: int,
    users: Mapping[int, tuple[str, int]],
    node: Callable[[Node, Node], Node] = honest_node,
) -> Levels:
    """Levels of the tree with ``users[slot] = (user id, amount)``; other slots padded."""
    level: list[Node] = []
    for slot in range(1 << height):
        if slot in users:
            user, amount = users[slot]
            level.append((leaf_hash(asset, commitment(user, salt(user)), amount), amount))
        else:
            level.append((padding_hash(asset, PADDING_KEY, slot), 0))
    levels = [level]
    while len(level) > 1:
        level = [node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def path(levels: Levels, slot: int) -> list[PathStep]:
    return [PathStep(*levels[lvl][(slot >> lvl) ^ 1]) for lvl in range(len(levels) - 1)]
