"""The key/value reads, synchronous and free of trio.

Why a class of its own: the database answers reads from its projections, and so does
the command line, which reads a database in a one-shot process that must not pay for
trio (``kdelta get`` starts, answers and exits in a few tens of milliseconds). Both go
through this one implementation of what a read means: which version is current, what
time travel and history return, how a diff picks its versions. The database adds the
lifecycle checks and the await around it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from operator import itemgetter
from typing import Any, TypeVar, cast

from koru.events import (
    InvalidArgumentError,
    InvalidDataError,
    KeyNotFoundError,
    NoValueAtTimeError,
    check_name,
    decode_value,
)
from koru.projections import EXPIRES, NO_ID, RECORD_SIZE, TOMBSTONE, KvState, VersionRecord
from koru.projections._kv import LAST_PLACE

from ._cache import MISSING
from ._diff import Diff, diff_values, pick_version
from ._history import NULL, HistoryCache, decode_all, history_rows
from ._reader import ValueReader
from ._space import DEFAULT, Space
from ._time import to_ns
from ._types import Version, Versioned

__all__ = [
    "ANSWER_BYTES",
    "VISIBLE",
    "Budget",
    "KeyReads",
    "budgeted",
    "least_bytes",
    "listed_bytes",
    "refuse_past_answer",
    "unbounded",
    "version_of",
]

T = TypeVar("T")

#: The bytes the answer of the read running in this task may hold (None: no bound),
#: set by the server of remote clients around each call. Why: a history is read whole
#: (every version's value, from the log if not cached) before it can be measured, so
#: a client's request of 50 bytes for a key of gigabytes of versions had the server
#: read and encode them all, then refuse the answer as too large (h-dos).
ANSWER_BYTES: ContextVar[int | None] = ContextVar("ANSWER_BYTES", default=None)
#: What a listing read in this task may show, if not everything: a predicate of the
#: stored namespace and the key (None when it is asked of a namespace itself), set by an
#: authorized handle whose identity may read only part of what it lists, so that the
#: read skips the rest as it goes and bounds only what is left. Why: such a listing
#: was read with no bound (``unbounded``), built and sorted whole, then filtered: a
#: client that may read one key had the server list every key of a namespace of
#: 300,000 (2.6 s, 35 MB) or every key with a ttl of the database (3 s, 80 MB), at
#: every request, for an answer of one name (h-resid).
VISIBLE: ContextVar[Callable[[str, str | None], bool] | None] = ContextVar("VISIBLE", default=None)
#: Fewer bytes than any version's fields take in an answer besides its value (about
#: 265 measured): a history whose values and this per version are over the bound
#: is refused before a value is read.
_VERSION_FIELDS = 200
#: Each packed record's value size (after its location, see ``PLACE``).
_SIZE_AT = LAST_PLACE + RECORD_SIZE + 8
_SIZES = struct.Struct(f">{_SIZE_AT}xI{RECORD_SIZE - _SIZE_AT - 4}x")

#: A raw version record's content id (see ``KvState.history_raw``).
_CID = itemgetter(3)


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def version_of(namespace: str, key: str, r: VersionRecord) -> Version:
    """The public metadata of a version record."""
    return Version(
        namespace,
        key,
        r.write_id.hex(),
        _hex(r.content_id),
        r.hlc,
        _hex(r.previous),
        r.origin.hex(),
        r.deleted,
        r.expires,
    )


class KeyReads:
    """Reads of keys, values, versions and history from a :class:`KvState` (any state
    holding the keys asked about) and the :class:`ValueReader` of its store.

    ``now`` tells the time a value with a time to live is judged by: it must never go
    backwards (the database gives the later of its clock and its newest timestamp), so
    that an expired value cannot come back.
    """

    __slots__ = ("histories", "kv", "now", "values")

    def __init__(self, kv: KvState, values: ValueReader, now: Callable[[], int]) -> None:
        self.kv = kv
        self.values = values
        self.now = now
        self.histories = HistoryCache()

    @staticmethod
    def _names(namespace: str, key: str) -> None:
        # The database checks names before it reads; the command line reads here
        # directly, so the one rule is applied here too (cheap for ASCII names).
        check_name(namespace, "namespace")
        check_name(key, "key")

    def _value(self, namespace: str, key: str, r: VersionRecord) -> Any:
        assert r.content_id is not None
        return decode_value(self.values.value_bytes(r.content_id, r.location, namespace, key))

    def _versioned(self, namespace: str, key: str, r: VersionRecord) -> Versioned:
        return Versioned(self._value(namespace, key, r), *version_of(namespace, key, r))

    def versioned(self, namespace: str, key: str) -> Versioned:
        """The current value with its metadata (KeyNotFoundError if none)."""
        self._names(namespace, key)
        r = self.kv.current(namespace, key)
        if r is None or r.deleted or (r.expires is not None and r.expired(self.now())):
            raise KeyNotFoundError(namespace, key)
        return self._versioned(namespace, key, r)

    def at(self, namespace: str, key: str, at: Any) -> Versioned:
        """The value current at ``at`` (NoValueAtTimeError if none then)."""
        self._names(namespace, key)
        return self.at_time(namespace, key, to_ns(at))

    def at_time(self, namespace: str, key: str, when: int) -> Versioned:
        """:meth:`at` for names checked already and a time in nanoseconds: the answer
        built straight from the raw record (as ``history_rows`` builds its rows, inlined:
        time travel is a hot path)."""
        rec = self.kv.at_raw(namespace, key, when)
        if rec is None:
            raise NoValueAtTimeError(namespace, key, when)
        hlc, origin, wid, cid, prev, location, _, expires, flags = rec
        if flags and (flags & TOMBSTONE or (flags & EXPIRES and when >= expires)):
            raise NoValueAtTimeError(namespace, key, when)
        value = self.values.cache.value(cid)
        if value is MISSING:
            value = decode_value(self.values.value_bytes(cid, location, namespace, key))
        return tuple.__new__(
            Versioned,
            (
                value,
                namespace,
                key,
                wid.hex(),
                cid.hex(),
                hlc,
                None if prev == NO_ID else prev.hex(),
                origin.hex(),
                False,
                expires if flags & EXPIRES else None,
            ),
        )

    def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]:
        """Every version, oldest first, deletions included (value None)."""
        self._names(namespace, key)
        if latest is not None and (type(latest) is not int or latest < 0):
            raise InvalidDataError(f"latest must be a non-negative int, not {latest!r}")
        values = self.values
        if since is None and until is None and latest is None:
            blob = self.kv.history_blob(namespace, key)
            if blob is None:
                return []
            if ANSWER_BYTES.get() is not None:
                _bound(len(blob) // RECORD_SIZE, sum(s for (s,) in _SIZES.iter_unpack(blob)))
            kept = self.histories.rows(namespace, key, blob)
            if type(kept) is list:
                return kept
            # No list of record tuples alive while the values decode (fewer objects
            # for the cyclic collector to visit): the rows come from a second pass
            # over the blob.
            parts = values.cache.peek_all(KvState.content_ids(blob))
            if None in parts:
                self._fill(namespace, key, KvState.records(blob), parts)
            found = cast("list[bytes]", parts)
            return self.histories.keep(namespace, key, blob, found, kept is True)
        recs = self.kv.history_raw(namespace, key)
        if since is not None:
            lo = to_ns(since, end=False)
            recs = [r for r in recs if r[0] >= lo]
        if until is not None:
            hi = to_ns(until)
            recs = [r for r in recs if r[0] <= hi]
        if latest is not None:
            recs = recs[len(recs) - latest :] if latest else []
        if ANSWER_BYTES.get() is not None:
            _bound(len(recs), sum(r[6] for r in recs))
        # A key may have thousands of versions: raw records, one cbor2 call for all
        # values, rows built in one pass (see _history).
        parts = values.cache.peek_all(list(map(_CID, recs)))
        if None in parts:
            self._fill(namespace, key, recs, parts)
        return history_rows(namespace, key, recs, decode_all(cast("list[bytes]", parts)))

    def _fill(
        self, namespace: str, key: str, recs: list[tuple[Any, ...]], parts: list[bytes | None]
    ) -> None:
        """Put in ``parts`` the encodings the value cache lacked: deletions' (None's)
        and values read from the log."""
        values = self.values
        for i, r in enumerate(recs):
            if parts[i] is None:
                parts[i] = (
                    NULL if r[8] & TOMBSTONE else values.value_bytes(r[3], r[5], namespace, key)
                )

    def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff:
        """A structural diff between two versions (history index or write id prefix)."""
        self._names(namespace, key)
        recs = self.kv.history(namespace, key)
        old, new = pick_version(recs, from_version), pick_version(recs, to_version)
        values = [
            None if r.content_id is None else self._value(namespace, key, r) for r in (old, new)
        ]
        changes = diff_values(values[0], values[1])
        if ANSWER_BYTES.get() is not None:  # (a served call)
            # Each change repeats its whole path: values of kilobytes may give paths of
            # gigabytes. (Its old and new parts are at most the two values.)
            paths = sum(len(p) if type(p) is str else 9 for c in changes for p in c.path)
            less = "history(latest=2), diffed where you are"
            refuse_past_answer("diff", paths, len(changes), 8, less)
        return Diff(version_of(namespace, key, old), version_of(namespace, key, new), changes)

    def keys(self, namespace: str) -> list[str]:
        """The namespace's keys with a current value, sorted."""
        check_name(namespace, "namespace")
        now = self.now() if self.kv.expiring else None
        keep = VISIBLE.get()
        if ANSWER_BYTES.get() is None and keep is None:
            return self.kv.keys(namespace, now)
        # A served call: read under the bound, refused as soon as it is passed (a
        # namespace of millions of keys was listed whole, packed, then refused); only
        # what the caller may see counts (see VISIBLE).
        live = self.kv.live_keys(namespace, now)
        if keep is not None:
            live = (k for k in live if keep(namespace, k))
        return sorted(budgeted("keys", live, listed_bytes, KEYS_LESS))

    def keys_in(
        self,
        namespace: str,
        named: Iterable[str],
        prefixes: Iterable[str],
        keep: Callable[[str], bool],
    ) -> list[str]:
        """The keys with a current value that are among ``named`` or start with one of
        ``prefixes``, and that ``keep`` allows, sorted: all read in one state at one
        reading of the clock, as :meth:`keys` lists, under the bound of a served answer
        (counting only what is kept). Each prefix's range alone is read, and each named
        key looked up: a listing for a client granted ``user-42/*`` reads about the keys
        it may see, not the namespace (h-wild)."""
        check_name(namespace, "namespace")
        kv = self.kv
        now = self.now() if kv.expiring else None
        heads: list[str] = []
        for p in sorted(set(prefixes)):  # each prefix's range once: none inside another
            if not heads or not p.startswith(heads[-1]):
                heads.append(p)
        ranged = (k for p in heads for k in kv.live_keys(namespace, now, p))
        out = budgeted("keys", (k for k in ranged if keep(k)), listed_bytes, KEYS_LESS)
        alone = [k for k in set(named) if not any(k.startswith(p) for p in heads)]
        if alone:
            out += (k for k in self.present(namespace, alone) if keep(k))
            out.sort()
        return out

    def namespaces(self, space: Space = DEFAULT) -> list[str]:
        """The space's namespaces holding at least one current value, sorted (by the
        names its callers know them by)."""
        keep = VISIBLE.get()
        found = self.kv.live_namespaces(
            self.now() if self.kv.expiring else None,
            None if keep is None else lambda ns: keep(ns, None),
        )
        shown = (space.outward(ns) for ns in found)
        kept = (ns for ns in shown if ns is not None)
        return sorted(budgeted("namespaces", kept, listed_bytes, NAMESPACES_LESS))

    def value(self, namespace: str, key: str) -> Any:
        """The current value (KeyNotFoundError if none): ``Database.get`` for a
        workspace (whose names are checked and stored already)."""
        kv = self.kv
        try:
            cid = kv.live_content_id(namespace, key)
        except TypeError:  # an unhashable key
            cid = None
        if kv.hot:
            kv.touch(namespace, key)
        if cid is not None and kv.expiring and kv.expired(namespace, key, self.now()):
            cid = None
        if cid is None or type(key) is not str:
            raise KeyNotFoundError(namespace, key)
        data = self.values.cache.get(cid)
        if data is None:
            current = kv.current(namespace, key)
            assert current is not None
            data = self.values.value_bytes(cid, current.location, namespace, key)
        return decode_value(data)

    def contains(self, namespace: str, key: str) -> bool:
        """True if the key has a current value (not deleted, not expired)."""
        self._names(namespace, key)
        kv = self.kv
        if kv.live_content_id(namespace, key) is None:
            return False
        return not (kv.expiring and kv.expired(namespace, key, self.now()))

    def present(self, namespace: str, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` (valid names) that have a current value, in their order,
        all read in one state at one reading of the clock (as :meth:`keys` lists)."""
        check_name(namespace, "namespace")
        kv = self.kv
        now = self.now() if kv.expiring else None
        found = []
        for key in keys:
            if kv.live_content_id(namespace, key) is None:
                continue
            if now is None or not kv.expired(namespace, key, now):
                found.append(key)
        return found


def _bound(versions: int, value_bytes: int) -> None:
    """Refuse a history whose answer is surely over :data:`ANSWER_BYTES`."""
    bound = ANSWER_BYTES.get()
    if bound is not None and value_bytes + versions * _VERSION_FIELDS > bound:
        raise InvalidArgumentError(
            f"history(): {versions} versions holding {value_bytes} bytes of values are "
            f"over the {bound} bytes an answer may hold: ask for less (latest, since, until)"
        )


#: How to ask for less than a served listing refused as too large.
KEYS_LESS = "a query of the namespace with limit, offset and select"
NAMESPACES_LESS = "read the namespaces you know by name"


def listed_bytes(name: str) -> int:
    """Fewer bytes than ``name`` takes in an answer (its characters and a header)."""
    return len(name) + 1


class Budget:
    """The bytes an answer built so far surely takes, against :data:`ANSWER_BYTES`
    (read when it is made; None: no bound): :meth:`add` refuses as soon as they pass
    it, with the typed error of every refused answer, before the rest is built."""

    __slots__ = ("bound", "call", "items", "less", "used")

    def __init__(self, call: str, less: str) -> None:
        self.bound = ANSWER_BYTES.get()
        self.call = call
        self.less = less
        self.used = self.items = 0

    def add(self, size: int) -> None:
        """One more item of at least ``size`` bytes (a no-op when there is no bound)."""
        self.used += size
        self.items += 1
        if self.bound is not None and self.used > self.bound:
            raise InvalidArgumentError(
                f"{self.call}(): over {self.items} results and {self.used} bytes, past the "
                f"{self.bound} bytes an answer may hold: ask for less ({self.less})"
            )


def budgeted(call: str, items: Iterable[T], size: Callable[[T], int], less: str) -> list[T]:
    """``items`` as a list, built under :data:`ANSWER_BYTES` when it is set (a served
    call): refused as soon as the bytes they surely take (``size`` of each, at most
    what it takes encoded) pass the bound, before the rest is read. Why: a listing
    (keys, namespaces, expiring keys) was built whole, then packed, then refused, for
    a request of some 50 bytes."""
    budget = Budget(call, less)
    if budget.bound is None:
        return list(items)
    out = []
    add = budget.add
    for item in items:
        add(size(item))
        out.append(item)
    return out


def least_bytes(value: Any, stop: int) -> int:
    """Fewer bytes than ``value`` (a document's part) takes encoded: its strings' and
    byte strings' lengths and a byte for every other item; counted up to a little past
    ``stop`` only (its walk is as long as that, not as the value)."""
    total = 0
    stack = [value]
    pop, grow = stack.pop, stack.extend
    while stack and total <= stop:
        v = pop()
        kind = type(v)
        if kind is str or kind is bytes:
            total += 1 + len(v)
        elif kind is dict:
            total += 1
            grow(v.keys())
            grow(v.values())
        elif kind is list or kind is tuple:
            total += 1
            grow(v)
        elif isinstance(v, str | bytes | bytearray):
            total += 1 + len(v)
        elif isinstance(v, dict):
            total += 1
            grow(v.keys())
            grow(v.values())
        elif isinstance(v, list | tuple):
            total += 1
            grow(v)
        else:
            total += 1
    return total


@contextmanager
def unbounded() -> Iterator[None]:
    """Within it, :data:`ANSWER_BYTES` is unset: for a served call that filters what
    it gets from the read below it (by the identity's capabilities) and bounds the
    filtered answer itself, so the read does not refuse what the client would not
    have been sent."""
    token = ANSWER_BYTES.set(None)
    try:
        yield
    finally:
        ANSWER_BYTES.reset(token)


@contextmanager
def visible_only(keep: Callable[[str, str | None], bool]) -> Iterator[None]:
    """Within it, a listing shows only what ``keep`` allows (see :data:`VISIBLE`), and
    is bounded (if it is a served call) by what it shows."""
    token = VISIBLE.set(keep)
    try:
        yield
    finally:
        VISIBLE.reset(token)


def refuse_past_answer(call: str, value_bytes: int, items: int, per_item: int, less: str) -> None:
    """Refuse an answer of ``items`` holding ``value_bytes`` bytes of values (and at
    least ``per_item`` more each) that is surely over :data:`ANSWER_BYTES`: called by
    a read before it builds its answer, when the bound is set (a served call)."""
    bound = ANSWER_BYTES.get()
    if bound is not None and value_bytes + items * per_item > bound:
        raise InvalidArgumentError(
            f"{call}(): {items} results holding {value_bytes} bytes are over the {bound} "
            f"bytes an answer may hold: ask for less ({less})"
        )
