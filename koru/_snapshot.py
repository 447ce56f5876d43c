"""One-shot reads of a database directory: no trio, no lock, no full load.

Why: ``kdelta get`` is a process that starts, answers one key and exits. It restores
the key/value projection from the checkpoint, which costs what the checkpoint's small
parts cost (its version records are in tables, read in place: a key nobody asks for is
never read), folds the storage log past the checkpoint's cursor (verified from the
cursor's root, so what was written since is seen, also while another process writes)
and finds the newest timestamp of every log, by which a time to live is judged,
and reads values from the log, proven against their content ids, exactly as an open
database does (:class:`~koru._reads.KeyReads` is the same code).

When the checkpoint cannot answer (none yet, one of an older format, a table missing
or damaged, a log that does not continue the cursor) the reader loads the database in
full instead, as ``koru.open(readonly=True)`` does, and that load reports real damage
with its exact location.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from functools import partial

from koru.events import AGENTS, STORAGE, FileStore, KoruError, decode_trusted
from koru.projections import CHECKPOINT_FILE, KvState, decode_checkpoint, open_tables

from ._cache import ValueCache
from ._reader import ValueReader
from ._reads import KeyReads

__all__ = ["Snapshot"]

#: The value cache of a one-shot read: a few values, not the database's 64 MiB.
_CACHE_BYTES = 4 * 1024 * 1024


class _Unusable(Exception):
    """The fast path cannot answer; load in full."""


class Snapshot:
    """A read-only view of a database directory's key/value state (``reads``).

    ``full`` is True when it had to load the database in full. Close it (or use
    ``with``) to release its files.

    Raises:
        StorageError: no database at ``path``, or it cannot be read.
        CorruptLogError, DataLossError: the full load found damage.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.store = FileStore(path, readonly=True)
        self._floor: int | None = None
        try:
            found: tuple[KvState, int] | None
            try:
                found = self._from_checkpoint()
            except (_Unusable, KoruError):
                found = None
            self.full = found is None
            placements: Sequence[Callable[[bytes], int | None]] = ()
            if found is None:
                from ._loader import load  # only when needed: it costs imports

                loaded = load(self.store)
                kv, newest, placements = loaded.kv, loaded.hlc, loaded.projections.placements
            else:
                kv, newest = found
            values = ValueReader(self.store, ValueCache(_CACHE_BYTES), placements)
            self.reads = KeyReads(kv, values, partial(self._read_time, newest))
        except BaseException:
            self.store.close()
            raise

    def _from_checkpoint(self) -> tuple[KvState, int]:
        """The key/value state and the newest timestamp of any log, as a load would
        find them: the checkpoint's, then every log past its cursor."""
        store = self.store
        raw = store.read_file(CHECKPOINT_FILE)
        if raw is None:
            raise _Unusable("no checkpoint")
        checkpoint = decode_checkpoint(raw)
        section = checkpoint.sections.get(KvState.name)
        if checkpoint.node != store.node_id or section is None or section[0] != KvState.version:
            raise _Unusable("no key/value section of this version")
        try:
            kv = KvState.restore(open_tables(section[1], store.open_table))
        except (ValueError, TypeError, KeyError) as exc:
            raise _Unusable(f"unusable section: {exc!r}") from None
        # What was written since the checkpoint: key/value writes in the storage log,
        # and a later timestamp in any log (the database judges expiry by it).
        newest = checkpoint.hlc
        present = store.agents()
        for agent in [a for a in AGENTS if a in checkpoint.cursors or a in present]:
            for record in store.records(agent, after=checkpoint.cursors.get(agent)):
                event = decode_trusted(record.data)
                if event.hlc > newest:
                    newest = event.hlc
                if agent == STORAGE:
                    kv.apply(event, record.event_id, record.location)
        return kv, newest

    def _read_time(self, newest: int) -> int:
        """The time values with a time to live are judged by. The read floor a clean
        close saved (signed by the node key, when it can be read here: a value a read of
        the database found expired stays so) is read when such a value is first judged:
        checking its signature imports pynacl (about 5 ms) and the node key's modules,
        which other reads skip."""
        if self._floor is None:
            from ._nodekey import node_public_key
            from ._read_floor import load_read_floor

            self._floor = load_read_floor(self.store, node_public_key(self.store))
        # clock-ok: a one-shot read judges time-to-live as the database does: by this
        # machine's clock, never earlier than the newest timestamp of any log, nor
        # than the read floor.
        return max(time.time_ns(), newest, self._floor)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
