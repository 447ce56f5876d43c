"""Structural, Git-style diffs between two versions of a value.

Dicts are compared key by key, lists are aligned with :class:`difflib.SequenceMatcher`
(the standard library's longest-matching-block algorithm, the same idea as a line
diff) so an insertion in the middle of a list is one ``add`` rather than a cascade of
changes, and scalars are compared by type and value (``1``, ``1.0`` and ``True`` differ,
as they do once stored).
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

import cbor2

from koru.events import InvalidArgumentError, VersionNotFoundError
from koru.projections import VersionRecord

from ._types import Version

__all__ = ["Change", "Diff", "diff_values", "pick_version"]

Path = tuple[str | int, ...]


class Change(NamedTuple):
    """One difference: ``op`` at ``path`` (dict keys and list indexes from the root)."""

    op: Literal["add", "remove", "change"]
    path: Path
    old: Any
    new: Any


class Diff(NamedTuple):
    """The changes that turn version ``old`` into version ``new``."""

    old: Version
    new: Version
    changes: list[Change]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __str__(self) -> str:
        where = f"{self.old.namespace}/{self.old.key}"
        lines = [
            f"--- {where} @ {self.old.write_id[:12]}",
            f"+++ {where} @ {self.new.write_id[:12]}",
        ]
        for c in self.changes:
            path = _render_path(c.path)
            if c.op == "add":
                lines.append(f"+ {path}: {_render(c.new)}")
            elif c.op == "remove":
                lines.append(f"- {path}: {_render(c.old)}")
            else:
                lines.append(f"- {path}: {_render(c.old)}")
                lines.append(f"+ {path}: {_render(c.new)}")
        return "\n".join(lines)


def _render_path(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "(value)"


def _render(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except TypeError:
        return repr(value)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _key(value: Any) -> bytes:
    # Hashable, type-exact identity of a value for list alignment.
    return bytes(cbor2.dumps(value, canonical=True))


def diff_values(old: Any, new: Any, path: Path = ()) -> list[Change]:
    """The structural changes from ``old`` to ``new``."""
    return _diff(old, new, path, [ALIGNED_PAIRS])


def _diff(old: Any, new: Any, path: Path, budget: list[int]) -> list[Change]:
    if type(old) is dict and type(new) is dict:
        changes: list[Change] = []
        for k in sorted(old.keys() | new.keys()):
            if k not in new:
                changes.append(Change("remove", (*path, k), old[k], None))
            elif k not in old:
                changes.append(Change("add", (*path, k), None, new[k]))
            else:
                changes.extend(_diff(old[k], new[k], (*path, k), budget))
        return changes
    if type(old) is list and type(new) is list:
        return _diff_lists(old, new, path, budget)
    if _same(old, new):
        return []
    return [Change("change", path, old, new)]


#: Pairs of items (old x new) SequenceMatcher is asked to align in one diff, at most:
#: its matching is quadratic, and worse with repeated items (two lists of 8,000 zeros,
#: one item apart, took 11 s, on the event loop; values of 16 MiB, for ever). Past it,
#: a list's common head and tail are set aside, and the rest paired by position.
ALIGNED_PAIRS = 1_000_000


def _diff_lists(old: list[Any], new: list[Any], path: Path, budget: list[int]) -> list[Change]:
    keys_old, keys_new = [_key(v) for v in old], [_key(v) for v in new]
    head, end_old, end_new = 0, len(old), len(new)
    if end_old * end_new > budget[0]:
        most = min(end_old, end_new)
        while head < most and keys_old[head] == keys_new[head]:
            head += 1
        while end_old > head and end_new > head and keys_old[end_old - 1] == keys_new[end_new - 1]:
            end_old, end_new = end_old - 1, end_new - 1
    changes: list[Change] = []
    pairs = (end_old - head) * (end_new - head)
    if pairs > budget[0]:  # paired by position
        paired = min(end_old, end_new)
        for i in range(head, paired):
            if keys_old[i] != keys_new[i]:
                changes.extend(_diff(old[i], new[i], (*path, i), budget))
        changes.extend(Change("remove", (*path, i), old[i], None) for i in range(paired, end_old))
        changes.extend(Change("add", (*path, j), None, new[j]) for j in range(paired, end_new))
        return changes
    budget[0] -= pairs
    import difflib  # (here: a one-shot read that diffs nothing does not import it)

    matcher = difflib.SequenceMatcher(
        None, keys_old[head:end_old], keys_new[head:end_new], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        i1, i2, j1, j2 = i1 + head, i2 + head, j1 + head, j2 + head
        if tag == "replace" and i2 - i1 == j2 - j1:
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                changes.extend(_diff(old[i], new[j], (*path, j), budget))
            continue
        changes.extend(Change("remove", (*path, i), old[i], None) for i in range(i1, i2))
        changes.extend(Change("add", (*path, j), None, new[j]) for j in range(j1, j2))
    return changes


def pick_version(recs: list[VersionRecord], which: int | str) -> VersionRecord:
    """The version named by a history index (negative from the end) or by a write id
    (or a unique prefix of at least 4 hex digits).

    Raises:
        VersionNotFoundError: no such version, or an ambiguous prefix.
        InvalidArgumentError: ``which`` is neither an int nor a str.
    """
    if type(which) is int:
        try:
            return recs[which]
        except IndexError:
            raise VersionNotFoundError(
                f"no version {which}: the key has {len(recs)} versions"
            ) from None
    if type(which) is not str:
        raise InvalidArgumentError(
            f"a version is a history index (int) or a write id (str), not {which!r}"
        )
    if len(which) >= 4:
        found = [r for r in recs if r.write_id.hex().startswith(which.lower())]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise VersionNotFoundError(f"write id prefix {which!r} is ambiguous")
    raise VersionNotFoundError(f"no version {which!r} of this key")
