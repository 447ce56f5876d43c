"""Checking a checkpoint (and the tables it names) against a replay of the log it
summarises.

A checkpoint is trusted at open (its checksum passed, its cursors match the log), so a
checkpoint written by a buggy build, or crafted with a fresh checksum, would be served.
``kdelta verify`` settles it: fold the log from genesis up to the checkpoint's cursors
into fresh projections and compare each with what the checkpoint restores; and read
every entry of every table it names.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

import cbor2

from koru.events import CorruptCheckpointError, KoruError, LogStore, Table, decode_trusted
from koru.projections import (
    CHECKPOINT_FILE,
    KvState,
    LazyList,
    Projection,
    Projections,
    decode_checkpoint,
    open_tables,
    table_names,
)
from koru.projections._indexes import Indexes
from koru.projections._views import Views

from ._cache import ValueCache
from ._documents import live_records
from ._indexing import fill
from ._loader import BUILTIN_PROJECTIONS
from ._reader import ValueReader

__all__ = ["audit_checkpoint", "content_of"]


def content_of(projection: Projection) -> Any:
    """What a projection holds, comparable between two states that should agree (a
    replay and a checkpoint's restore; the simulations' invariants compare them too)."""
    if isinstance(projection, KvState):
        return (
            list(projection.all_items()),
            projection.live,
            projection.versions,
            projection.key_total,
            # A namespace whose last key went counts 0 live, and a restored state
            # leaves it out: the same thing.
            sorted((ns, n) for ns, n in projection.ns_live.items() if n),
            projection.digest(),
            sorted(projection.expiring.items()),
        )
    content = getattr(projection, "content", None)
    if content is not None:  # a projection with tables says what it holds
        return content()
    return _canonical(projection.capture())


class _LiveDocuments:
    """The live documents of each namespace of the replayed key/value state, read from
    the log (each proven against its content id) once per namespace however many
    indexes and views of it are checked."""

    def __init__(self, kv: KvState, store: LogStore) -> None:
        self._kv = kv
        self._values = ValueReader(store, ValueCache(0))
        self._read: dict[str, dict[str, Any]] = {}

    def __call__(self, ns: str) -> dict[str, Any]:
        docs = self._read.get(ns)
        if docs is None:
            uncached = self._values.uncached
            docs = self._read[ns] = {
                key: uncached(cid, location, ns, key, size)
                for key, cid, location, size in live_records(self._kv, ns)
            }
        return docs


def _fill_as(replayed: Indexes, restored: Indexes, kv: KvState, docs: _LiveDocuments) -> None:
    """Fill each index of the replay that the checkpoint holds filled, as the database
    fills one, from the replayed key/value state and the values in the log (proven
    against their content ids). Why: a replay leaves every index pending (the database
    fills one after open, or when a query first could use it), so a checkpoint of a
    filled index always disagreed with it."""
    for ns, paths in replayed.by_namespace.items():
        for path, index in paths.items():
            twin = restored.get(ns, path)
            if not index.pending or twin is None or twin.pending:
                continue
            fill(index, kv, docs(ns).__getitem__)


def _catch_up_as(replayed: Views, restored: Views, kv: KvState, docs: _LiveDocuments) -> None:
    """Bring the views of both states to the documents of the replayed key/value state,
    as the database does when a view is read: a pending view filled, a filled one
    caught up with its dirty keys; then leave out of both the keys whose current value
    has a time to live. Why: a replay leaves every view pending with every key written
    dirty, so a checkpoint of any view always disagreed with it; and a view drops a
    value whose time to live has passed when it is read, before any event says so (its
    membership depends on when it was last read, not on the log alone)."""
    for ns in sorted(set(replayed.by_namespace) | set(restored.by_namespace)):
        # Left out: the keys whose current value has a time to live (as if expired).
        timed = {key for (n, key) in kv.expiring if n == ns}
        live = {key: doc for key, doc in docs(ns).items() if key not in timed}
        for state in (replayed, restored):  # as the database's Viewing.fill / catch_up
            for view in state.by_namespace.get(ns, {}).values():
                if view.pending:
                    view.fill(list(live.items()))
            state.catch_up(ns, live, timed)


def _canonical(data: Any) -> bytes:
    """The canonical CBOR of captured state (what two states that agree share)."""
    return cbor2.dumps(_plain(data), canonical=True)


def _plain(data: Any) -> Any:
    """``data`` with every memoryview (a projection's uncopied buffer) as bytes, and
    every list as its items' canonical encodings, sorted. Why sorted: a captured list
    is mostly a map's entries in the order they were first folded, and the replay
    folds each agent's log in turn, not in the order the node received the events
    (the feed heads of a node that wrote ``storage`` before ``perspective`` were
    reported as disagreeing): the same events must give the same content."""
    if type(data) is memoryview:
        return data.tobytes()
    if type(data) is list or type(data) is LazyList:  # (a lazy list: made here)
        return sorted(cbor2.dumps(_plain(v), canonical=True) for v in data)
    if type(data) is dict:
        return {k: _plain(v) for k, v in data.items()}
    return data


#: How many checkpoints in a row a live writer may replace while each is checked.
_ATTEMPTS = 4


def audit_checkpoint(store: LogStore) -> tuple[list[str], list[str]]:
    """(problems, notes) of the store's checkpoint: problems are disagreements with the
    log and damaged tables; notes say what was not checked (no checkpoint, a projection
    not known here) and what is only untidy (tables no checkpoint names).

    Beside a live writer the checkpoint may be replaced while it is checked, and the
    tables only it named removed: one found to have problems is read again, and if it
    changed, the new one is checked instead (as a read-only open reads the newer one).
    """
    raw = store.read_file(CHECKPOINT_FILE)
    for _ in range(_ATTEMPTS):
        problems, notes = _audit(store, raw)
        if not problems:
            break
        again = store.read_file(CHECKPOINT_FILE)
        if again == raw:
            break
        raw = again
    return problems, notes


def _audit(store: LogStore, raw: bytes | None) -> tuple[list[str], list[str]]:
    """:func:`audit_checkpoint` of the checkpoint whose bytes are ``raw``."""
    if raw is None:
        return [], ["no checkpoint to check"]
    try:
        checkpoint = decode_checkpoint(raw)
    except CorruptCheckpointError as exc:
        return [f"checkpoint unreadable: {exc}"], []
    problems: list[str] = []
    notes: list[str] = []
    if checkpoint.node is not None and checkpoint.node != store.node_id:
        problems.append("the checkpoint was written by another node")
    named = table_names(checkpoint.sections)
    # Each table is opened once, first, and restored from what was opened: a live
    # writer may remove it meanwhile (its file stays readable through what is open).
    opened: dict[str, Table] = {}
    for name in sorted(named):
        try:
            table = store.open_table(name)
            table.verify_content()
            for _ in table.entries():
                pass
        except KoruError as exc:
            problems.append(f"table {name}: {exc}")
        else:
            opened[name] = table

    def reopen(name: str) -> Table:
        table = opened.get(name)
        return store.open_table(name) if table is None else table

    orphans = store.table_names() - named
    if orphans:
        notes.append(f"{len(orphans)} tables no checkpoint names (removed at the next one)")
    replayed = Projections(kind() for kind in BUILTIN_PROJECTIONS)
    for agent, cursor in sorted(checkpoint.cursors.items()):
        folded, root = 0, None
        try:
            # Not one record past the cursor: what follows it was never proven durable
            # (a crash's tail fails its checks there), and is not the checkpoint's.
            for record in itertools.islice(store.records(agent, 0), cursor.count):
                replayed.apply(decode_trusted(record.data), record.event_id, record.location)
                folded, root = record.position + 1, record.root
        except KoruError as exc:
            problems.append(f"replaying {agent!r} to the checkpoint failed: {exc}")
            continue
        if folded < cursor.count:
            problems.append(
                f"the {agent!r} log holds {folded} records, the checkpoint covers {cursor.count}"
            )
        elif cursor.count and root != cursor.root:
            problems.append(f"the {agent!r} chain root at record {cursor.count} differs")
    kinds = {kind.name: kind for kind in BUILTIN_PROJECTIONS}
    kv = cast(KvState, replayed["kv"])
    docs = _LiveDocuments(kv, store)
    for name, (version, data) in sorted(checkpoint.sections.items()):
        kind = kinds.get(name)
        if kind is None:
            notes.append(f"section {name!r} not checked (a projection not known here)")
            continue
        if kind.version != version:
            notes.append(f"section {name!r} is version {version}, not {kind.version}: not checked")
            continue
        try:
            restored = kind.restore(open_tables(data, reopen))
            if isinstance(restored, Indexes):
                _fill_as(cast(Indexes, replayed[name]), restored, kv, docs)
            elif isinstance(restored, Views):
                _catch_up_as(cast(Views, replayed[name]), restored, kv, docs)
            same = content_of(restored) == content_of(replayed[name])
        except (KoruError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"section {name!r} cannot be restored: {exc}")
            continue
        if not same:
            problems.append(f"section {name!r} disagrees with a replay of the log")
    return problems, notes
