"""Which keys each node keeps in its hot tier, as its distillation process decided.

A pure fold of the lifecycle agent's tiering events. Why per origin: each node decides
for itself (from what its own readers ask for), and its decisions reach other nodes
like any data; keeping them apart makes the state the same in any arrival order, and a
node follows only its own. Replaying the log gives the same hot set as before.
"""

from __future__ import annotations

from typing import Any, ClassVar

from koru.events import NODE_ID_SIZE, Event, TieringEvent

__all__ = ["TierState"]


class TierState:
    """origin -> the set of (namespace, key) that origin keeps hot."""

    __slots__ = ("hot",)

    name: ClassVar[str] = "tiers"
    version: ClassVar[int] = 1
    #: The only events it folds (the seam calls it for no other).
    kinds: ClassVar[frozenset[type[Event]]] = frozenset({TieringEvent})

    def __init__(self) -> None:
        self.hot: dict[bytes, set[tuple[str, str]]] = {}

    def of(self, origin: bytes) -> set[tuple[str, str]]:
        """The origin's hot set (the same set object from now on, kept up to date)."""
        return self.hot.setdefault(origin, set())

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if type(event) is TieringEvent:
            keys = self.of(event.origin)
            keys.difference_update(event.demoted)
            keys.update(event.promoted)

    def capture(self) -> Any:
        return [
            [origin, sorted([ns, k] for ns, k in keys)]
            for origin, keys in sorted(self.hot.items())
            if keys
        ]

    @classmethod
    def restore(cls, data: Any) -> TierState:
        state = cls()
        if type(data) is not list:
            raise ValueError("tiers must be a list")
        for origin, keys in data:
            if type(origin) is not bytes or len(origin) != NODE_ID_SIZE or type(keys) is not list:
                raise ValueError("malformed tier entry")
            pairs = []
            for pair in keys:
                # (A pair of anything else was taken: two-letter strings unpacked into
                # names, and an int beside a str made every later capture raise
                # TypeError, h-proc.)
                if (
                    type(pair) is not list
                    or len(pair) != 2
                    or not all(type(n) is str for n in pair)
                ):
                    raise ValueError("malformed tier key")
                pairs.append((pair[0], pair[1]))
            state.of(origin).update(pairs)
        return state
