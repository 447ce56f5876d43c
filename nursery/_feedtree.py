"""A Merkle tree over a node's feed heads: what two peers compare to reconcile.

Every feed (origin, agent) is a hash chain whose head event names its predecessor, so
the head ``(seq, id)`` commits to every event of the feed: a tree over the heads is a
tree over the whole set of event ids, at one leaf per feed. Two nodes holding the same
events have the same root (32 bytes, one round trip); where they differ they drill
down the subtrees whose hashes differ and exchange heads only there, and each side
then sends the other the events after the other's head.

A leaf's place is ``blake3(origin || agent)``, read four bits per level (16 children a
node), so both sides put a feed at the same place. In messages a feed is named by an
8-byte tag, ``blake3(salt || origin || agent)``, salted per session so that nobody can
choose feeds whose tags collide.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import blake3

__all__ = ["EMPTY_ROOT", "Feed", "FeedTree", "feed_tag"]

Feed = tuple[bytes, str]

#: The root of a node that holds no feed.
EMPTY_ROOT = bytes(32)
#: Deepest level of the tree (each level is four bits of a feed's place).
MAX_DEPTH = 16

_SEQ = struct.Struct(">Q")


def _place(feed: Feed) -> int:
    digest = blake3.blake3(feed[0] + feed[1].encode()).digest(8)
    return int.from_bytes(digest, "big")


def feed_tag(salt: bytes, feed: Feed) -> bytes:
    """The feed's 8-byte name in this session's messages."""
    return blake3.blake3(salt + feed[0] + feed[1].encode()).digest(8)


class FeedTree:
    """The tree of one set of heads (``feed -> (seq, id)``), built once and queried.

    Leaves are sorted by place; a subtree ``(depth, prefix)`` is the run of leaves
    whose place starts with ``prefix`` (``depth`` nibbles), found by bisection.
    """

    __slots__ = ("_hashes", "_heads", "_leaves", "_places")

    def __init__(self, heads: Mapping[Feed, tuple[int, bytes]]) -> None:
        leaves = sorted((_place(feed), feed) for feed in heads)
        self._heads = heads
        self._places = [place for place, _ in leaves]
        self._leaves = [feed for _, feed in leaves]
        self._hashes = [
            blake3.blake3(
                feed[0] + feed[1].encode() + b"\0" + _SEQ.pack(heads[feed][0]) + heads[feed][1]
            ).digest()
            for feed in self._leaves
        ]

    def __len__(self) -> int:
        return len(self._leaves)

    @property
    def heads(self) -> Mapping[Feed, tuple[int, bytes]]:
        return self._heads

    def _span(self, depth: int, prefix: int) -> tuple[int, int]:
        from bisect import bisect_left

        shift = 64 - 4 * depth
        low = prefix << shift if depth else 0
        high = (prefix + 1) << shift if depth else 1 << 64
        return bisect_left(self._places, low), bisect_left(self._places, high)

    def hash(self, depth: int = 0, prefix: int = 0) -> bytes:
        """The subtree's hash (``EMPTY_ROOT`` when it holds no feed)."""
        start, end = self._span(depth, prefix)
        if start == end:
            return EMPTY_ROOT
        hasher = blake3.blake3()
        for digest in self._hashes[start:end]:
            hasher.update(digest)
        return hasher.digest()

    def root(self) -> bytes:
        return self.hash()

    def count(self, depth: int, prefix: int) -> int:
        start, end = self._span(depth, prefix)
        return end - start

    def feeds(self, depth: int = 0, prefix: int = 0) -> list[Feed]:
        """The feeds of a subtree, in place order."""
        start, end = self._span(depth, prefix)
        return self._leaves[start:end]

    def children(self, depth: int, prefix: int) -> list[tuple[int, int, bytes]]:
        """The 16 children ``(depth + 1, prefix, hash)`` of a subtree."""
        return [
            (depth + 1, (prefix << 4) | nibble, self.hash(depth + 1, (prefix << 4) | nibble))
            for nibble in range(16)
        ]

    @staticmethod
    def contains(depth: int, prefix: int, feed: Feed) -> bool:
        """True if ``feed`` belongs under the subtree."""
        if depth == 0:
            return True
        return _place(feed) >> (64 - 4 * depth) == prefix


def tags_of(salt: bytes, feeds: Iterable[Feed]) -> dict[bytes, Feed]:
    """Each feed by its tag in this session."""
    return {feed_tag(salt, feed): feed for feed in feeds}
