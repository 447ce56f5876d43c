"""The model the index of keys by expiry time (``projections/_deadlines.py``) is held to:
a plain dict, scanned. Shared by its property tests (``test_deadlines.py``, and
``test_ttl_index_attack.py`` with times at every edge)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from koru.projections._deadlines import Deadlines
from koru.projections._layered import _joined

Model = dict[tuple[str, str], int]


def check(found: Deadlines, model: Model, bound: int) -> None:
    """``found`` answers as a scan of ``model`` up to ``bound``, and its buckets hold
    exactly the model's entries."""
    want = sorted((k, t) for k, t in model.items() if t <= bound)
    assert sorted(found.at_most(bound)) == want
    assert found.count_at_most(bound) == len(want)
    assert dict(found.items()) == model and len(found) == len(model)
    filed = {k: t for bucket in found._buckets.values() for k, t in bucket.items()}
    assert filed == {_joined(k): t for k, t in model.items()}


def run(ops: Iterable[Any], bounds: Iterable[int]) -> None:
    """Apply ``ops`` to an index and the model alike, checking every question asked
    (``ask``) and, at the end, every bound of ``bounds``."""
    found, model = Deadlines(), {}
    for op in ops:
        kind = op[0]
        if kind == "set":
            found[op[1]] = op[2]
            model[op[1]] = op[2]
        elif kind == "pop":
            assert found.pop(op[1], None) == model.pop(op[1], None)
        elif kind == "del":
            if op[1] in model:
                del found[op[1]]
                del model[op[1]]
        elif kind == "ask":
            check(found, model, op[1])
        elif kind == "snapshot":
            snap = found.snapshot()
            assert len(list(snap.items())) == len(model)  # (lists it: merges its layers)
        elif kind == "settle":
            found.settle()
        elif kind == "refile":
            found._refile()
        elif kind == "restore":  # a checkpoint's columns loaded into a new map
            restored = Deadlines()
            restored.load_pairs([k[0] for k in model], [k[1] for k in model], list(model.values()))
            found = restored
        else:
            found.clear()
            model.clear()
    for bound in bounds:
        check(found, model, bound)
