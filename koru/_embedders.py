"""Embedders: what turns content into a vector for ``put_similar`` and ``find_similar``.

An embedder is any object with a ``model`` name (stored with every embedding it makes,
so its vectors are never searched against another model's) and an ``embed(content)``
method returning a 1-D sequence of floats of one fixed dimension.

The default, :class:`HashingEmbedder`, is deterministic and needs nothing installed: it
hashes the words and word pairs of the content into a fixed number of signed buckets
(feature hashing). It is **lexical, not semantic**: texts that share words are similar,
"car" and "automobile" are not. For meaning, plug in a real model with
``koru.open(embedder=...)``: any object with ``model`` and ``embed``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import blake3

__all__ = ["Embedder", "HashingEmbedder", "text_of"]

_WORD = re.compile(r"\w+")


@runtime_checkable
class Embedder(Protocol):
    """Turns content into a vector: ``model`` names the vector space."""

    model: str

    def embed(self, content: Any) -> Sequence[float] | Any:
        """A 1-D vector (a sequence of floats or a numpy array) for ``content``."""
        ...


def text_of(content: Any) -> str:
    """The words of a value: text as is; keys, and leaves as text, of the rest."""
    if isinstance(content, str):
        return content
    parts: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for key in sorted(item, key=str):
                parts.append(str(key))
                walk(item[key])
        elif isinstance(item, list | tuple):
            for element in item:
                walk(element)
        elif isinstance(item, bytes | bytearray):
            parts.append(bytes(item).hex())
        else:
            parts.append(str(item))

    walk(content)
    return " ".join(parts)


class HashingEmbedder:
    """Feature hashing of words and word pairs into ``dim`` signed buckets, weighted by
    log term frequency, normalized (see the module doc: lexical, not semantic).

    Deterministic across processes and machines (blake3 of each feature, not Python's
    salted ``hash``), so stored embeddings and later queries agree.
    """

    def __init__(self, dim: int = 256) -> None:
        if type(dim) is not int or not 8 <= dim <= 65_536:
            raise ValueError(f"dim must be an int from 8 to 65536, not {dim!r}")
        self.dim = dim
        self.model = f"koru-hashing-{dim}-v1"

    def embed(self, content: Any) -> list[float]:
        words = _WORD.findall(text_of(content).lower())
        features = words + [f"{a} {b}" for a, b in pairwise(words)]
        counts: dict[str, int] = {}
        for feature in features or ["\x00empty"]:  # no words: one fixed direction
            counts[feature] = counts.get(feature, 0) + 1
        vector = [0.0] * self.dim
        for feature, count in counts.items():
            digest = int.from_bytes(blake3.blake3(feature.encode()).digest(8), "little")
            weight = 1.0 + math.log(count)
            vector[digest % self.dim] += weight if digest >> 63 else -weight
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0.0:  # features that cancelled out exactly: any fixed direction
            vector[0], norm = 1.0, 1.0
        return [v / norm for v in vector]
