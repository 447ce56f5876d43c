"""Rebuilding projection state from a store: checkpoint plus tail, or full replay.

A checkpoint plays two parts. Its projection state is a shortcut, never the truth: a
checkpoint that is missing, unreadable or written by another node is ignored and the
logs are replayed from genesis, giving identical state. Its cursors are a *proof*: the
log was synced up to them before the checkpoint was written, so a log that no longer
reaches them lost data (:class:`~koru.DataLossError`), and a record before them that
fails its checks is corruption, not the leftovers of a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import attrs

from koru.events import (
    AGENTS,
    CodecError,
    CorruptCheckpointError,
    CorruptLogError,
    Cursor,
    LogStore,
    PutRun,
    RunDecoder,
)
from koru.projections import (
    CHECKPOINT_FILE,
    AuthState,
    Checkpoint,
    FeedState,
    KvState,
    Projection,
    Projections,
    TierState,
    VectorState,
    decode_checkpoint,
    open_tables,
)
from koru.projections._indexes import Indexes
from koru.projections._lineage import LineageState
from koru.projections._views import Views
from koru.projections._workspaces import WorkspaceState

__all__ = ["BUILTIN_PROJECTIONS", "Loaded", "load", "proven_cursors"]

#: The projections every database has; others are registered after them.
BUILTIN_PROJECTIONS: tuple[type[Projection], ...] = (
    KvState,
    FeedState,
    TierState,
    Indexes,
    Views,
    LineageState,
    WorkspaceState,
    AuthState,
    VectorState,
)


@attrs.define(slots=True)
class Loaded:
    """The state rebuilt from a store, and how it was obtained."""

    projections: Projections
    hlc: int
    #: Events restored from the checkpoint (0 if none was usable).
    from_checkpoint: int
    #: Events replayed from the log past the checkpoint (all of them without one).
    replayed: int
    #: Why the checkpoint file was not used (None if used or absent).
    checkpoint_problem: str | None = None
    #: Projections whose checkpoint section was missing, stale or unusable, rebuilt
    #: from the log while the others loaded theirs, with the reason for each.
    rebuilt: dict[str, str] = attrs.Factory(dict)
    #: The tables the checkpoint names (any other table on disk is an orphan).
    tables: set[str] = attrs.Factory(set)

    @property
    def kv(self) -> KvState:
        return cast(KvState, self.projections["kv"])

    @property
    def feeds(self) -> FeedState:
        return cast(FeedState, self.projections["feeds"])


def load(
    store: LogStore,
    *,
    use_checkpoint: bool = True,
    projections: Sequence[type[Projection]] = BUILTIN_PROJECTIONS,
) -> Loaded:
    """Rebuild every projection: from this node's checkpoint and the log tail if there
    is one, else by replaying every log from genesis. Both give identical state.

    A projection whose own section of the checkpoint is unusable is rebuilt from
    genesis alone while the others load theirs. ``use_checkpoint=False`` replays from
    genesis but still holds the log to the checkpoint's cursors (what they prove
    durable).

    Raises:
        DataLossError: the log ends before what the checkpoint proves durable.
        CorruptLogError: a record that was proven durable fails verification, or a
            record's event is malformed.
    """
    checkpoint, problem = _read_checkpoint(store)
    for _ in range(_TABLE_RETRIES):
        if checkpoint is None or not store.readonly or _tables_present(store, checkpoint):
            break
        # A read-only open racing the writer: it removed a table the checkpoint read a
        # moment ago named, because a newer checkpoint replaced it. Read that one.
        checkpoint, problem = _read_checkpoint(store)
    floors = checkpoint.cursors if checkpoint is not None else {}
    loaded = _replay(store, checkpoint if use_checkpoint else None, floors, projections)
    loaded.checkpoint_problem = problem
    if checkpoint is not None:
        loaded.tables = set(checkpoint.tables)
    return loaded


_TABLE_RETRIES = 5


def _tables_present(store: LogStore, checkpoint: Checkpoint) -> bool:
    return checkpoint.tables <= store.table_names()


def proven_cursors(store: LogStore) -> dict[str, Cursor]:
    """What this node's checkpoint proves durable in each log ({} without a usable
    one): the floors a reader of raw records passes to ``LogStore.replay``. Why: such a
    reader (a replay, an export, an event listing) took a log cut short below them for
    a crash's torn tail and read a shorter history without a word, where an open
    raises DataLossError."""
    checkpoint, _ = _read_checkpoint(store)
    return dict(checkpoint.cursors) if checkpoint is not None else {}


def _read_checkpoint(store: LogStore) -> tuple[Checkpoint | None, str | None]:
    raw = store.read_file(CHECKPOINT_FILE)
    if raw is None:
        return None, None
    try:
        checkpoint = decode_checkpoint(raw)
    except CorruptCheckpointError as exc:
        return None, str(exc)
    if checkpoint.node is not None and checkpoint.node != store.node_id:
        node = checkpoint.node.hex()
        return None, f"the checkpoint was written by another node ({node})"
    return checkpoint, None


def _restore(
    store: LogStore, kinds: Sequence[type[Projection]], checkpoint: Checkpoint | None
) -> tuple[list[Projection], dict[str, str]]:
    """Each projection from its section, or empty (and listed for a rebuild, with why)."""
    members: list[Projection] = []
    rebuild: dict[str, str] = {}
    for kind in kinds:
        member: Projection | None = None
        section: tuple[int, Any] | None = None
        if checkpoint is not None:
            section = checkpoint.sections.get(kind.name)
            if section is None and _saw_nothing(kind, checkpoint):
                pass  # it folds only agents with no records before the cursors: empty
            elif section is None:
                rebuild[kind.name] = "no section in the checkpoint"
            elif section[0] != kind.version:
                rebuild[kind.name] = f"section version {section[0]}, not {kind.version}"
            else:
                opened: list[Any] = []

                def opening(name: str, opened: list[Any] = opened) -> Any:
                    table = store.open_table(name)
                    opened.append(table)
                    return table

                try:
                    restored = kind.restore(open_tables(section[1], opening))
                    if not isinstance(restored, kind):
                        # Taken as "no state" it would be an empty projection that
                        # misses every event before the cursor: rebuild it instead.
                        raise TypeError(f"restore returned {type(restored).__name__}")
                    member = restored
                except Exception as exc:
                    # Why broadly: the file's checksum passed, so a section that fails
                    # is a format bug or a crafted file; that projection rebuilds.
                    rebuild[kind.name] = f"unusable section: {exc!r}"
                    for table in opened:  # (its maps and descriptors were kept open)
                        table.release()
        members.append(member if member is not None else kind())
    return members, rebuild


def _saw_nothing(kind: type[Projection], checkpoint: Checkpoint) -> bool:
    """True if ``kind`` folds only some agents (``agents``) and none of them has records
    before the checkpoint's cursors: its state there is the empty one, so a checkpoint
    written before it existed costs no replay."""
    agents = getattr(kind, "agents", None)
    if agents is None:
        return False
    cursors = checkpoint.cursors
    return all(agent not in cursors or cursors[agent].count == 0 for agent in agents)


def _replay(
    store: LogStore,
    checkpoint: Checkpoint | None,
    floors: dict[str, Cursor],
    kinds: Sequence[type[Projection]],
) -> Loaded:
    members, rebuild = _restore(store, kinds, checkpoint)
    if checkpoint is not None and not any(
        k.name in checkpoint.sections and k.name not in rebuild for k in kinds
    ):
        # Nothing usable in it (a projection without a section that saw nothing counts
        # for nothing): a plain full replay.
        checkpoint = None
        rebuild = {}
    hlc, cursors, base = 0, {}, 0
    if checkpoint is not None:
        hlc, cursors = checkpoint.hlc, checkpoint.cursors
        base = sum(c.count for c in cursors.values())
    # Records before the checkpoint's cursor are folded only into the projections being
    # rebuilt; from the cursor on, into all. Without a rebuild, replay starts there.
    from_genesis = checkpoint is None or bool(rebuild)
    refold = set(rebuild)
    if from_genesis:
        # The feeds are the replay's own check of every record (below), so they are
        # refolded from genesis with whatever is rebuilt; cheap, and not reported.
        refold.add(FeedState.name)
        members = [FeedState() if p.name == FeedState.name else p for p in members]
    projections = Projections(members)
    # Records before a rebuild's boundary go to the projections being rebuilt alone.
    rebuilt = Projections([p for p in members if p.name in refold])
    feeds = cast(FeedState, projections[FeedState.name])
    replayed = 0
    present = store.agents()
    for agent in [a for a in AGENTS if a in cursors or a in floors or a in present]:
        cursor = cursors.get(agent)
        start = None if from_genesis else cursor
        boundary = cursor.count if cursor is not None and from_genesis else 0
        first = start.count if start is not None else 0
        # Decoding checks every record (its fields, its agent, and that it follows its
        # feed: every feed in a local log is contiguous, since the ingest path holds gaps
        # back and refuses forks) and hands consecutive puts of a feed over as runs.
        records = store.replay_plain(agent, start, floors.get(agent))
        decoded = RunDecoder(records, agent, feeds.heads.get, cut=boundary)
        try:
            for item in decoded:
                if type(item) is PutRun:
                    (projections if item.position >= boundary else rebuilt).apply_run(item)
                    ts = item.top
                else:
                    location, position, eid, event = item  # type: ignore[misc]
                    target = projections if position >= boundary else rebuilt
                    target.apply(event, eid, location)
                    ts = event.hlc
                if ts > hlc:
                    hlc = ts
        except CodecError as exc:
            _, _, offset, path = store.locate(decoded.location)
            raise CorruptLogError(
                agent, decoded.position, offset, f"malformed event: {exc}", path
            ) from None
        replayed += store.cursor(agent).count - max(first, boundary)
    return Loaded(projections, hlc, base, replayed, rebuilt=rebuild)
