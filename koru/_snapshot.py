"""One-shot reads of a database directory: no trio, no lock, and no full load when the
checkpoint's key directory can answer.

Why: ``kdelta get`` is a process that starts, answers one key and exits. Loading a
database of a million events (checkpoint and all) takes about a second; this module
answers from the key directory written beside the checkpoint instead: the key's
version records are read from the checkpoint file (a few KB, checked against the
directory's crc32), then the storage log past the checkpoint's cursor is folded in
(verified from the cursor's root, so what was written since is seen, also while another
process writes), and values are read from the log and proven against their content ids,
exactly as an open database does (:class:`~koru._reads.KeyReads` is the same code).

Anything amiss on that path (no directory, one of another checkpoint, a blob failing its
crc32, a log that does not continue the cursor) is not reported from here: the reader
loads the database in full instead, as ``koru.open(readonly=True)`` does, and that load
reports real damage with its exact location.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence

from koru.events import STORAGE, FileStore, KoruError, decode_trusted
from koru.projections import CHECKPOINT_FILE, KEYS_FILE, KeyDirectory, KvState

from ._cache import ValueCache
from ._reader import ValueReader
from ._reads import KeyReads

__all__ = ["Snapshot"]

#: The value cache of a one-shot read: a few values, not the database's 64 MiB.
_CACHE_BYTES = 4 * 1024 * 1024
_DIGEST = slice(8, 40)  # a checkpoint file's blake3 digest, after its magic


class _Unusable(Exception):
    """The fast path cannot answer; load in full."""


class Snapshot:
    """A read-only view of a database directory's key/value state.

    ``keys`` and ``namespace`` say what will be asked: only those are read through the
    key directory. With neither, or when the directory cannot be used, every projection
    is loaded (``full`` is then True). Close it (or use ``with``) to release its files.

    Raises:
        StorageError: no database at ``path``, or it cannot be read.
        CorruptLogError, DataLossError: the full load found damage.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keys: Iterable[tuple[str, str]] = (),
        namespace: str | None = None,
    ) -> None:
        self.store = FileStore(path, readonly=True)
        try:
            wanted = set(keys)
            kv: KvState | None = None
            if wanted or namespace is not None:
                try:
                    kv = self._from_directory(wanted, namespace)
                except (_Unusable, KoruError):
                    kv = None
            self.full = kv is None
            placements: Sequence[Callable[[bytes], int | None]] = ()
            if kv is None:
                from ._loader import load  # only when needed: it costs imports

                loaded = load(self.store)
                kv, placements = loaded.kv, loaded.projections.placements
            values = ValueReader(self.store, ValueCache(_CACHE_BYTES), placements)
            state = kv
            # clock-ok: a one-shot read judges time-to-live by this machine's clock, and
            # never earlier than the newest timestamp in the database.
            self.reads = KeyReads(kv, values, lambda: max(time.time_ns(), state.max_hlc))
        except BaseException:
            self.store.close()
            raise

    def _from_directory(self, wanted: set[tuple[str, str]], namespace: str | None) -> KvState:
        store = self.store
        raw = store.read_file(KEYS_FILE)
        head = store.read_range(CHECKPOINT_FILE, 0, _DIGEST.stop)
        if raw is None or head is None:
            raise _Unusable("no key directory")
        directory = KeyDirectory(raw, KvState.version)
        if head[_DIGEST] != directory.checkpoint_digest:
            raise _Unusable("the key directory is of another checkpoint")
        kv = KvState()
        places = [
            (ns, key, found) for ns, key in wanted if (found := directory.find(ns, key)) is not None
        ]
        if namespace is not None:
            places += [(namespace, k, (o, n, c)) for k, o, n, c in directory.namespace(namespace)]
        for ns, key, (offset, length, crc) in places:
            blob = store.read_range(CHECKPOINT_FILE, offset, length)
            if blob is None or len(blob) != length or zlib.crc32(blob) != crc:
                raise _Unusable("a key's version records fail their check")
            kv.namespaces.setdefault(ns, {})[key] = blob
        # What was written since the checkpoint: fold the events that touch the keys.
        for record in store.records(STORAGE, after=directory.cursor):
            event = decode_trusted(record.data)
            if any(
                w.namespace == namespace or (w.namespace, w.key) in wanted for w in event.writes
            ):
                kv.apply(event, record.event_id, record.location)
        return kv

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
