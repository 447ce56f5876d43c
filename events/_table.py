"""Tables: immutable, sorted files of (namespace, key) -> bytes, read in place.

Why: a projection as large as the data (every key's version records) cannot live in
memory, nor be rewritten whole by every checkpoint, nor be decoded whole by every open.
A table is written once, when a checkpoint moves what changed out of memory, and then
only read in place (a memory map), so opening a database costs what its tables' headers
cost, and a key nobody asks for costs no memory at all. Tables are named by their
content's hash and never change; newer tables hide older entries of the same key, and
compaction merges several into one.

Entries are grouped in blocks of ``BLOCK`` entries, and a block index (each block's
first key and where it starts) follows them, after the directory (each entry's hash
and offset). A lookup searches the directory in memory and reads one entry (or, when
the directory cannot settle it, one block): why not a binary search over every entry
in place: its probes would touch pages all over the file, and a process that read ten
thousand keys would have the whole table resident; this way it has the index in memory
(about 24 bytes per key) and the entries it read. Blocks of 8 entries (16 in older
tables: the header says); merges and scans read a block at a time.

Format (little-endian)::

    b"KORUTAB2" | u32 format | u32 entries per block | u64 entries | u64 index offset
    | u64 index length | 32 B blake3 (format 4: of the header's fields before it, then
      the index; formats 2 and 3: of the index)
    | entries, sorted by (namespace, key) as UTF-8 bytes:
        u32 crc32(rest of the entry) | u16 namespace length | namespace
        | u16 key length | key | u32 value length | value
    | index: (format 4) the directory: u8 offset width (4, or 8 past 4 GiB) | per
        entry, its hash (u32 crc32 of its u16 namespace length | namespace | u16 key
        length | key), ascending | the offsets of those entries, in the same order,
        (format 3) instead u32 filter bits | u8 probes | the filter's bytes,
        then per block, u16 namespace length | namespace | u16 key length | key
        | u64 offset of the block | (format 5) the first 8 bytes of blake3 of the
        block's entries

The directory (format 4) makes a lookup one binary search in memory (``bisect`` of an
array of u32, in C) and one short read of the entry itself: why: a cold read searched
the tables newest first with a Bloom filter probe each (seven probes in Python), read
its key's block whole and walked it entry by entry; that was a third of its CPU. It
costs 8 bytes per key in memory (the filter cost 1.25, the block index about 16). A key
no hash of the directory matches is in no entry (what the filter said, without its
false positives); a hash that matches but whose entry is another key's (another key of
the same crc32), or an entry that fails its crc32, is settled by walking the key's block
with every entry checked, as format 3 did: the directory never decides an answer alone.
Format 3 tables (a Bloom filter of the keys, about 10 bits and 7 probes per key) and
format 2 tables (neither) are still read, the old way (no migration step: a table of
an older format is rewritten as format 4 when compaction merges it, not before).

The index is verified against its hash when the table is opened and every entry read
is checked against its crc32, so damage is reported (:class:`CorruptCheckpointError`)
and never answered around: a table that fails is rebuilt from the log by its owner.

Format 5 adds each block's digest to the block index (held in memory with it, verified
with it: about one byte per key), and every block read is checked against it; a lookup
the directory matches reads the key's block (one ``pread``, as format 4 read the entry)
rather than the entry alone. Why: crc32s tell damage, not intent. An entry rewritten in
place with a fresh crc32 after the open's check and the scrub (a key's newest version
record replaced by an older one: the value it then names is genuine, and proven against
its content id) was served by a handle that had the table open, and a merge's walk
wrote it into a new table under a fresh name. Tables of formats 2 to 4 are still read
as they were (rewritten as format 5 when a merge takes them).
"""

from __future__ import annotations

import heapq
import struct
import sys
import weakref
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import blake3

try:  # hashlib's own blake2b: importing hashlib loads OpenSSL as well (about 2.5 ms)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter without the module
    from hashlib import blake2b

from ._errors import CorruptCheckpointError
from ._store import Offload, call_here

__all__ = [
    "BLOCK",
    "HEADER_SIZE",
    "KeyProbe",
    "TABLE_MAGIC",
    "Table",
    "TableEncoder",
    "encode_table",
    "key_probe",
    "table_name",
]

TABLE_MAGIC = b"KORUTAB2"
_FORMAT = 5
#: Formats read (2: without a filter; 3: with a Bloom filter; 4: with a directory).
_READ_FORMATS = (2, 3, 4, 5)
_FILTER_BITS_PER_KEY = 10
_PROBES = 7
_FILTER_HEAD = struct.Struct("<IB")
#: Bytes of a value a directory lookup reads with its entry at first (a version
#: record's blob is about a hundred): a longer entry is read again, whole.
_GUESS = 256
#: Entries per block of the tables written (a table's header says its own: tables of
#: 16 are still read). Why 8: a lookup walks its block entry by entry in Python, and
#: that walk was the largest share of a cold read's CPU; halving it cost the index in
#: memory 12.5 more bytes per key (35 -> 47.5 B of resident memory per cold key in the
#: tiers bench, against a budget of 150).
BLOCK = 8
#: The largest block size a table may declare.
_MAX_BLOCK = 4096
_HEAD = struct.Struct("<8sIIQQQ32s")
#: The header's fields before its hash (which covers them, in format 4).
_PREFIX = struct.Struct("<8sIIQQQ")
#: Bytes of a table's header.
HEADER_SIZE = _HEAD.size
_CRC = struct.Struct("<I")
_CRC_U16 = struct.Struct("<IH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: The array type code of unsigned 32-bit ints (a directory's hashes and offsets).
_U32_ARRAY = "I" if array("I").itemsize == 4 else "L"
#: Rows per sorted run when the encoder sorts its items: a sort of this many keys is one
#: call of about a millisecond, between which the encoder gives way (see ``pace``).
_CHUNK = 4096
#: Entries per :meth:`TableEncoder.chunks` buffer (one write and one hash update each).
_BUFFER = 256 * 1024
#: Bytes per read when a whole table is hashed.
_VERIFY_READ = 4 * 1024 * 1024
#: Entries produced between two calls of ``pace``.
_PACE_EVERY = 64
#: Bytes of a block's blake3 digest kept in the block index (format 5).
_BLOCK_DIGEST = 8


def _pattern(ns: bytes, key: bytes) -> bytes:
    """The bytes an entry of (ns, key) starts with after its checksum."""
    return b"%b%b%b%b" % (_U16.pack(len(ns)), ns, _U16.pack(len(key)), key)


def _entry(pattern: bytes, value: bytes) -> bytes:
    body = b"%b%b%b" % (pattern, _U32.pack(len(value)), value)
    return _CRC.pack(zlib.crc32(body)) + body


class TableEncoder:
    """A table's bytes produced as they are written: the entries one by one (a table
    may be larger than memory would like to hold twice), then the header (written
    first in the file, known last) and the index.

    ``items`` are (namespace, key, value) in any order, a (namespace, key) at most once.

    ``pace`` (if given) is called every few dozen entries and between the pieces of
    work that hold the GIL for long (a sort run, a slice of the filter): the
    checkpointer passes one that lets the event loop run when the encoder works in a
    worker thread. Why: a worker thread that runs Python holds the GIL until the
    interpreter takes it away (every 5 ms), so each time the event loop let go of it
    (any system call) a put waited that long. ``offload`` runs the one long C call (the
    directory's sort, tens of milliseconds for a million keys): the checkpointer's runs
    it in a worker thread, the encoder itself running in slices on the event loop.
    """

    def __init__(
        self,
        items: Iterable[tuple[str, str, bytes]],
        *,
        presorted: bool = False,
        pace: Callable[[], None] | None = None,
        offload: Offload = call_here,
    ) -> None:
        self._pace = pace if pace is not None else _no_pace
        self._offload = offload
        # Sorted input (a merge of tables) streams through: a merge of the whole cold
        # tier must not hold it in memory.
        self._rows: Iterable[tuple[bytes, bytes, bytes]] = (
            _encoded(items) if presorted else _sorted(items, self._pace)
        )
        self.count = 0
        self._index: list[bytes] = []
        self._hashes = array("Q")
        #: Format 4: each entry's directory hash (crc32 of its pattern) and offset.
        self._crcs = array("I")
        self._offsets = array("Q")
        self._end = -1
        self._built: bytes | None = None
        self._format = _FORMAT

    def entries(self) -> Iterator[bytes]:
        """The entries, in order (once).

        Raises:
            ValueError: presorted items out of order, or a (namespace, key) twice.
        """
        at = _HEAD.size
        last: tuple[bytes, bytes] | None = None
        i = 0
        pace = self._pace
        digests = self._format >= 5
        block = blake3.blake3()
        for ns, key, value in self._rows:
            if not i % _PACE_EVERY:
                pace()
            if last is not None and (ns, key) <= last:
                raise ValueError("table items out of order, or a key twice")
            last = (ns, key)
            if i % BLOCK == 0:
                if digests and i:  # the block before, whole: its digest ends its record
                    self._index[-1] += block.digest(_BLOCK_DIGEST)
                    block = blake3.blake3()
                first = (_U16.pack(len(ns)), ns, _U16.pack(len(key)), key, _U64.pack(at))
                self._index.append(b"".join(first))
            pattern = _pattern(ns, key)
            entry = _entry(pattern, value)
            if digests:
                block.update(entry)
            if self._format >= 4:
                self._crcs.append(_dir_hash(pattern))
                self._offsets.append(at)
            else:
                self._hashes.append(_key_hash(ns, key))
            at += len(entry)
            i += 1
            yield entry
        if digests and i:
            self._index[-1] += block.digest(_BLOCK_DIGEST)
        self.count = i
        self._rows = ()
        self._end = at

    def chunks(self, size: int = _BUFFER) -> Iterator[bytes]:
        """:meth:`entries` joined into buffers of about ``size`` bytes: what a writer
        writes and hashes (one system call per buffer, not per entry)."""
        buf: list[bytes] = []
        held = 0
        for entry in self.entries():
            buf.append(entry)
            held += len(entry)
            if held >= size:
                yield b"".join(buf)
                buf, held = [], 0
        if buf:
            yield b"".join(buf)

    def index(self) -> bytes:
        """The filter and the block index (after :meth:`entries`; built once)."""
        if self._end < 0:
            raise ValueError("the entries were not produced yet")
        if self._built is None:
            if self._format >= 4:
                head = self._offload(_build_directory, self._crcs, self._offsets, self._end)
                self._crcs, self._offsets = array("I"), array("Q")
            else:
                bits, bloom = _build_filter(self._hashes, self._pace)
                head = _FILTER_HEAD.pack(bits, _PROBES) + bloom
            self._built = b"".join((head, *self._index))
        return self._built

    def header(self) -> bytes:
        """The header (after :meth:`entries`)."""
        index = self.index()
        fields = (TABLE_MAGIC, self._format, BLOCK, self.count, self._end, len(index))
        hasher = blake3.blake3(_PREFIX.pack(*fields)) if self._format >= 4 else blake3.blake3()
        hasher.update(index)
        return _HEAD.pack(*fields, hasher.digest())


#: A key as table lookups want it: ((namespace, key) as UTF-8, the bytes an entry of it
#: starts with after its checksum, and their crc32: its hash in a table's directory).
KeyProbe = tuple[tuple[bytes, bytes], bytes, int]


def key_probe(namespace: str, key: str) -> KeyProbe | None:
    """What :meth:`Table.lookup` takes for (namespace, key); None for a name that is not
    valid Unicode (it is in no table)."""
    try:
        target = (namespace.encode(), key.encode())
    except UnicodeEncodeError:
        return None
    pattern = _pattern(*target)
    return target, pattern, _dir_hash(pattern)


def _dir_hash(pattern: bytes) -> int:
    """A key's hash in a directory (format 4): the crc32 of its entry's pattern. Why
    32 bits of a checksum, not a cryptographic hash: the directory only ever saves work
    (a hash shared by two keys, even by a crafted key, costs one block walk), and the
    crc32 costs a tenth of a blake2b."""
    return zlib.crc32(pattern)


#: Namespace -> a blake2b hasher that has taken the namespace's part of the key hash,
#: copied for each key (about half the cost of a new hasher). Bounded: a database
#: uses few namespaces.
_NS_HASHERS: dict[bytes, Any] = {}
_NS_HASHERS_MAX = 1024


def _key_hash(ns: bytes, key: bytes) -> int:
    """A 64-bit hash of a (namespace, key), stable across processes (the filter is
    stored): blake2b of ``b"%d:%b%b" % (len(ns), ns, key)``, since Python's own hash of
    bytes is salted per process."""
    base = _NS_HASHERS.get(ns)
    if base is None:
        base = blake2b(b"%d:%b" % (len(ns), ns), digest_size=8)
        if len(_NS_HASHERS) < _NS_HASHERS_MAX and len(ns) <= 256:
            _NS_HASHERS[ns] = base
    h = base.copy()
    h.update(key)
    return int.from_bytes(h.digest(), "little")


#: Keys per slice of a filter built with numpy.
_FILTER_SLICE = 16_384
#: Up to this many keys a filter is built in Python: a small database never imports numpy.
_SMALL_FILTER = 4096


def _no_pace() -> None:
    pass


#: Blocks of an index read between two calls of its ``pace`` (see Table.load_index).
_INDEX_PACE = 1024


def _build_filter(hashes: array[int], pace: Callable[[], None] = _no_pace) -> tuple[int, bytes]:
    """(bits, bytes) of the Bloom filter of ``hashes``, built with numpy for many keys
    (a million in a fraction of a second, where a Python loop would hold the GIL for
    seconds) and in Python for few. numpy is imported only then: a process that only
    reads tables (a one-shot ``kdelta get``), or a small database, never pays for it.
    Built in slices of keys with ``pace`` between them: one ``bitwise_or.at`` over a
    million keys holds the GIL for tens of milliseconds."""
    bits = max(64, len(hashes) * _FILTER_BITS_PER_KEY)
    bits = -(-bits // 8) * 8
    if len(hashes) <= _SMALL_FILTER:
        return bits, _small_filter(hashes, bits)
    import numpy as np

    every = np.frombuffer(hashes, dtype=np.uint64) if len(hashes) else np.zeros(0, np.uint64)
    filter_ = np.zeros(bits // 8, dtype=np.uint8)
    for start in range(0, len(every), _FILTER_SLICE):
        pace()
        h = every[start : start + _FILTER_SLICE]
        h1 = h & np.uint64(0xFFFFFFFF)
        h2 = (h >> np.uint64(32)) | np.uint64(1)
        for i in range(_PROBES):
            pos = (h1 + np.uint64(i) * h2) % np.uint64(bits)
            np.bitwise_or.at(
                filter_,
                (pos >> np.uint64(3)).astype(np.intp),
                (np.uint8(1) << (pos & np.uint64(7)).astype(np.uint8)),
            )
    return bits, filter_.tobytes()


def _build_directory(crcs: array[int], offsets: array[int], end: int) -> bytes:
    """A table's directory (format 4): u8 offset width (4, or 8 for a table past 4 GiB)
    | every entry's hash (the crc32 of its pattern), u32 each, ascending | the entries'
    offsets in the same order, of that width. Sorted with numpy for many keys (one sort,
    which runs without the GIL), in Python for few (a small database never imports
    numpy); ties keep the entries' order, so both give the same bytes."""
    width = 4 if end <= 0xFFFFFFFF else 8
    if len(crcs) <= _SMALL_FILTER:
        order = sorted(range(len(crcs)), key=crcs.__getitem__)
        hashes = array("I", [crcs[i] for i in order])
        places = array("I" if width == 4 else "Q", [offsets[i] for i in order])
        if sys.byteorder == "big":
            hashes.byteswap()
            places.byteswap()
        return b"%b%b%b" % (bytes((width,)), hashes.tobytes(), places.tobytes())
    import numpy as np

    keys = np.frombuffer(crcs, dtype=np.uint32)
    ranks = np.argsort(keys, kind="stable")
    sorted_keys = keys[ranks].astype("<u4")
    sorted_offsets = np.frombuffer(offsets, dtype=np.uint64)[ranks].astype(
        "<u4" if width == 4 else "<u8"
    )
    return b"%b%b%b" % (bytes((width,)), sorted_keys.tobytes(), sorted_offsets.tobytes())


def _small_filter(hashes: Iterable[int], bits: int) -> bytes:
    """The filter :func:`_build_filter` builds, in Python (the same probes: uint64
    arithmetic wrapping at 2**64)."""
    filter_ = bytearray(bits // 8)
    for h in hashes:
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        for i in range(_PROBES):
            pos = ((h1 + i * h2) & 0xFFFFFFFFFFFFFFFF) % bits
            filter_[pos >> 3] |= 1 << (pos & 7)
    return bytes(filter_)


def encode_table(items: Iterable[tuple[str, str, bytes]]) -> list[bytes]:
    """A table's bytes, as pieces in order, from (namespace, key, value) items in any
    order (a (namespace, key) at most once)."""
    encoder = TableEncoder(items)
    entries = list(encoder.entries())
    return [encoder.header(), *entries, encoder.index()]


def _encoded(items: Iterable[tuple[str, str, bytes]]) -> Iterator[tuple[bytes, bytes, bytes]]:
    for ns, key, value in items:
        yield ns.encode(), key.encode(), value


def _sorted(
    items: Iterable[tuple[str, str, bytes]], pace: Callable[[], None]
) -> Iterator[tuple[bytes, bytes, bytes]]:
    """``items`` encoded and sorted by (namespace, key) bytes, with ``pace`` between
    the pieces of work. Held as one dict of keys per namespace, not as a list of row
    tuples: a hundred thousand tuples alive through a long sort made the cyclic garbage
    collector's full passes (which traverse every container) take tens of milliseconds.
    Each namespace's keys are sorted in runs of ``_CHUNK`` (one C call each, about a
    millisecond) merged lazily: one ``sorted`` of a million keys holds the GIL for a
    second."""
    by_ns: dict[bytes, dict[bytes, bytes]] = {}
    for i, (ns, key, value) in enumerate(items):
        if not i % _PACE_EVERY:
            pace()
        keys = by_ns.get(ns_b := ns.encode())
        if keys is None:
            keys = by_ns[ns_b] = {}
        key_b = key.encode()
        if key_b in keys:
            raise ValueError("table items out of order, or a key twice")
        keys[key_b] = value
    for ns_b in sorted(by_ns):
        keys = by_ns.pop(ns_b)
        names = list(keys)
        runs = []
        for start in range(0, len(names), _CHUNK):
            pace()
            runs.append(sorted(names[start : start + _CHUNK]))
        del names
        for key_b in heapq.merge(*runs) if len(runs) > 1 else runs[0]:
            yield ns_b, key_b, keys[key_b]


def table_name(pieces: list[bytes]) -> str:
    """The content name of a table: the first 16 bytes, in hex, of blake3 of its bytes
    after the header (the header is derived from them, and written last)."""
    hasher = blake3.blake3()
    for piece in pieces[1:]:
        hasher.update(piece)
    return hasher.hexdigest()[:32]


class Table:
    """A table read in place from ``data`` (a memory map or bytes), named ``name``.

    Construction reads the header only; :meth:`verify` (which the first lookup runs
    too) checks the index against its hash; each entry is checked against its crc32
    when read.

    Raises:
        CorruptCheckpointError: not a table, or damaged.
    """

    __slots__ = (
        "__weakref__",
        "_block_size",
        "_blocks",
        "_count",
        "_data",
        "_dir_hashes",
        "_dir_offsets",
        "_end",
        "_filter",
        "_filter_bits",
        "_firsts",
        "_format",
        "_index",
        "_opened",
        "_prefix",
        "_read",
        "_release",
        "_spots",
        "_starts",
        "_verified",
        "index_digest",
        "name",
        "size",
    )

    def __init__(
        self,
        data: Any,
        name: str,
        read: Callable[[int, int], bytes] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        #: Reads ``length`` bytes at an offset (a pread) for what a lookup needs: the
        #: index and single blocks. Why not the memory map: a page fault maps the
        #: pages around the one asked for too (fault-around), so ten thousand random
        #: lookups made a whole table resident, counted in the process's memory.
        self._read = read if read is not None else lambda at, n: bytes(data[at : at + n])
        self._release: weakref.finalize[Any, Any] | None = None
        self.size = len(data)
        if self.size < _HEAD.size:
            raise CorruptCheckpointError(f"table {name} is cut short")
        magic, fmt, block, count, index_at, index_len, digest = _HEAD.unpack_from(data, 0)
        if magic != TABLE_MAGIC or fmt not in _READ_FORMATS or not 1 <= block <= _MAX_BLOCK:
            raise CorruptCheckpointError(f"table {name} is not a koru table of format 2 or 3")
        self._format = fmt
        self._block_size = block
        self._filter = b""
        self._filter_bits = 0
        self._dir_hashes: array[int] | None = None
        self._dir_offsets: array[int] = array("Q")
        if not _HEAD.size <= index_at <= self.size or index_at + index_len != self.size:
            raise CorruptCheckpointError(f"table {name} is cut short or malformed")
        self._data = data
        self._count = count
        self._end = index_at  # where the entries end
        self._index = (index_at, index_len)
        #: The header's fields as read here: what the index's hash covers with it (the
        #: ones this table goes by, not the file's header read again later).
        self._prefix = bytes(data[: _PREFIX.size])
        #: Whether the index was checked against ``index_digest`` (see verify).
        self._verified = False
        #: The header's hash of the index (format 4: and of the header's fields): what
        #: a checkpoint records beside the name, so that the table it opens under that
        #: name is known to be the one it wrote without reading it whole (see
        #: ``projections.open_tables``).
        self.index_digest: bytes = digest
        #: Each block's first (namespace, key), once asked for (see _first_keys).
        self._firsts: list[tuple[bytes, bytes]] = []
        self._starts: list[int] = []
        #: The index's block part, verified, and where each block's start is in it
        #: (format 5: its digest follows).
        self._blocks = b""
        self._spots: list[int] = []
        self._opened = False  # the index read and its directory parsed (_open_index)
        # Closed with the table: when released, else when collected (tables are
        # dropped by compaction while readers may still hold them). Registered last:
        # a table refused above is closed by its opener, and a finalizer registered
        # before the refusal would close the descriptor a second time when collected,
        # by then perhaps another file's (a table's reads would then read that file).
        if release is not None:
            self._release = weakref.finalize(self, release)

    def __len__(self) -> int:
        return int(self._count)

    def verify(self) -> None:
        """Check the index against its hash (once; a table that fails is not used).
        Cheap: the index is about one sixteenth of the keys; it is parsed later, by the
        first lookup, so that an open costs what hashing the indexes costs.

        Raises:
            CorruptCheckpointError: it is damaged.
        """
        if not self._verified:
            self.read_index()
            self._verified = True

    def read_index(self) -> bytes:
        """The index as read now, checked against the header's hash (the one the
        checkpoint recorded): give it to :meth:`load_index`, which parses these bytes
        and no others. Why: the index was hashed at open and read again, unchecked, by
        the first lookup, so one rewritten in between (with blocks and digests to
        match) was believed.

        Raises:
            CorruptCheckpointError: it is damaged.
        """
        at, length = self._index
        index = self._read(at, length)
        # Format 4 hashes the header's fields with the index: a header that lies (its
        # format, block size, count or offsets) is refused as a damaged index is.
        hasher = blake3.blake3(self._prefix) if self._format >= 4 else blake3.blake3()
        hasher.update(index)
        if hasher.digest() != self.index_digest:
            raise CorruptCheckpointError(f"table {self.name}: its index is damaged")
        return index

    @property
    def indexed(self) -> bool:
        """True once its index is in memory (a lookup does not read it first)."""
        return bool(self._starts) or not self._count

    def load_index(self, pace: Callable[[], None] = _no_pace, index: bytes | None = None) -> None:
        """Read the index into memory now (once), calling ``pace`` every
        :data:`_INDEX_PACE` blocks: ``index`` as :meth:`read_index` returned it, else
        read and checked here. Why: a table's first lookup reads it otherwise, a Python
        loop over every block (5 to 17 ms for 100,000 keys): the writer of a table
        does this beside the puts, so that no put waits for it. The blocks' first keys
        too (:meth:`_first_keys`), which a scan of the table needs: a one-shot lookup
        parses neither."""
        self._load_index(pace, index)
        self._first_keys(pace)

    def _load_index(self, pace: Callable[[], None] = _no_pace, index: bytes | None = None) -> None:
        """Read the index into memory (once), parsing only bytes checked against its
        hash (see :meth:`read_index`): the directory (format 4 on) and each block's
        start; each block's first key and digest stay in the index's bytes until asked
        for (:meth:`_first_keys`). Why: a one-shot ``kdelta get`` parses the index of
        every table it searches, and building a tuple of two byte strings per block
        was most of that (11 -> 4 ms for a table of 100,000 keys)."""
        if self._starts or not self._count:
            return
        if not self._opened:
            self._open_index(index)
        self._walk(pace)

    def _open_index(self, index: bytes | None = None) -> None:
        """Read the index (checked against its hash) and parse its directory (format 4
        on) or filter (format 3); the blocks' part is kept for :meth:`_walk`. Enough
        to tell a key absent (a lookup's common case in all tables but one)."""
        if index is None:
            index = self.read_index()
        self._verified = True
        length = len(index)
        pos = 0
        if self._format >= 4:
            pos = self._load_directory(index)
        elif self._format == 3:
            try:
                bits, probes = _FILTER_HEAD.unpack_from(index, 0)
            except struct.error:
                raise CorruptCheckpointError(f"table {self.name}: its index is cut short") from None
            pos = _FILTER_HEAD.size + bits // 8
            if probes != _PROBES or bits % 8 or not bits or pos > length:
                raise CorruptCheckpointError(f"table {self.name}: its filter is malformed")
            self._filter, self._filter_bits = index[_FILTER_HEAD.size : pos], bits
        self._blocks = index[pos:] if pos else index
        self._opened = True

    def _walk(self, pace: Callable[[], None] = _no_pace) -> None:
        """Parse each block's start from the index's blocks' part (opened)."""
        starts: list[int] = []
        spots: list[int] = []  # where each block's start is written in ``blocks``
        step = 8 + (_BLOCK_DIGEST if self._format >= 5 else 0)
        blocks = self._blocks
        length = len(blocks)
        u16, u64 = _U16.unpack_from, _U64.unpack_from
        add_start, add_spot = starts.append, spots.append
        pos = 0
        due = _INDEX_PACE
        try:
            while pos < length:
                # [u16 n][namespace][u16 m][key][u64 start](format 5: [digest])
                pos += 2 + u16(blocks, pos)[0]
                pos += 2 + u16(blocks, pos)[0]
                add_start(u64(blocks, pos)[0])
                add_spot(pos)
                pos += step
                due -= 1
                if not due:
                    pace()
                    due = _INDEX_PACE
        except struct.error:
            raise CorruptCheckpointError(f"table {self.name}: its index is cut short") from None
        count = -(-self._count // self._block_size)
        if (
            len(starts) != count
            or starts != sorted(starts)
            or (starts and starts[0] != _HEAD.size)
            or pos != length
        ):
            raise CorruptCheckpointError(f"table {self.name}: its index does not match")
        self._spots, self._firsts = spots, []
        self._starts = starts

    def _first_keys(self, pace: Callable[[], None] = _no_pace) -> list[tuple[bytes, bytes]]:
        """(namespace, key) of each block's first entry, as the index gives them (parsed
        on the first call, ``pace`` called every :data:`_INDEX_PACE` blocks: only a
        lookup that misses the directory, and scans, need them)."""
        if not self._firsts and self._starts:
            blocks, u16 = self._blocks, _U16.unpack_from
            step = 8 + (_BLOCK_DIGEST if self._format >= 5 else 0)
            firsts = []
            pos = 0
            due = _INDEX_PACE
            for spot in self._spots:
                n = u16(blocks, pos)[0]
                at = pos + 2 + n
                firsts.append((blocks[pos + 2 : at], blocks[at + 2 : spot]))
                pos = spot + step
                due -= 1
                if not due:
                    pace()
                    due = _INDEX_PACE
            self._firsts = firsts
        return self._firsts

    def _load_directory(self, index: bytes) -> int:
        """Parse the directory at the start of a format 4 ``index`` (verified): the
        entries' hashes and offsets as arrays (8 bytes per key in memory, 12 past 4
        GiB); returns where the block index starts."""
        count = int(self._count)
        width = index[0] if index else 0
        end = 1 + count * (4 + width)
        if width not in (4, 8) or end > len(index) or (width == 4 and self._end > 0xFFFFFFFF):
            raise CorruptCheckpointError(f"table {self.name}: its directory is malformed")
        hashes = array(_U32_ARRAY)
        hashes.frombytes(index[1 : 1 + 4 * count])
        offsets = array(_U32_ARRAY if width == 4 else "Q")
        offsets.frombytes(index[1 + 4 * count : end])
        if sys.byteorder == "big":
            hashes.byteswap()
            offsets.byteswap()
        self._dir_hashes, self._dir_offsets = hashes, offsets
        return end

    def verify_content(self) -> None:
        """Check the whole table against its name (a hash of all but the header): what
        per-entry checksums cannot see, a table rewritten whole with fresh ones. Reads
        the whole file: for a scrub in the background, not for an open.

        Raises:
            CorruptCheckpointError: the content is not what the name says.
        """
        self.verify()
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        # In reads of a few MiB, not through the memory map (see _block).
        for at in range(_HEAD.size, self.size, _VERIFY_READ):
            hasher.update(self._read(at, min(_VERIFY_READ, self.size - at)))
        if hasher.hexdigest()[:32] != self.name:
            raise CorruptCheckpointError(
                f"table {self.name}: its content is not the one its name hashes (the log is "
                "intact: remove the checkpoint file to rebuild the state from it)"
            )

    def _block(self, b: int) -> Iterator[tuple[bytes, bytes, bytes]]:
        """The entries of block ``b``, each checked against its crc32. Read with one
        ``pread`` of the block, not through the memory map: a pass over a whole table
        (a merge, a scan) through the map would map every page of it into the process,
        counted in its memory and unmapped page by page when the table is dropped (tens
        of milliseconds on the event loop for a table of a hundred megabytes)."""
        data = self._block_bytes(b)
        end = len(data)
        pos = 0
        view = memoryview(data)
        size = self._block_size
        for i in range(b * size, min((b + 1) * size, self._count)):
            try:
                (crc,) = _CRC.unpack_from(data, pos)
                at = pos + 4
                (n,) = _U16.unpack_from(data, at)
                ns = data[at + 2 : at + 2 + n]
                at += 2 + n
                (m,) = _U16.unpack_from(data, at)
                key = data[at + 2 : at + 2 + m]
                at += 2 + m
                (v,) = _U32.unpack_from(data, at)
                nxt = at + 4 + v
                if nxt > end or zlib.crc32(view[pos + 4 : nxt]) != crc:
                    raise CorruptCheckpointError(
                        f"table {self.name}: entry {i} fails its check (the log is intact: "
                        "remove the checkpoint file to rebuild the state from it)"
                    )
            except struct.error:
                raise CorruptCheckpointError(f"table {self.name}: entry {i} is cut short") from None
            yield ns, key, data[at + 4 : nxt]
            pos = nxt

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value of (namespace, key), or None if the table has none (a name that is
        not valid Unicode is in no table)."""
        probe = key_probe(namespace, key)
        return None if probe is None else self.lookup(probe)

    def lookup(self, probe: KeyProbe) -> bytes | None:
        """:meth:`get` of a :func:`key_probe`: a lookup that searches several tables
        encodes and hashes the key once, not once per table."""
        if not self._starts:
            if not self._opened:
                self._open_index()
            hashes = self._dir_hashes
            if hashes is not None:  # absent from the directory: no block is needed
                h = probe[2]
                i = bisect_left(hashes, h)
                if i == len(hashes) or hashes[i] != h:
                    return None
            self._load_index()
        hashes = self._dir_hashes
        if hashes is not None:  # format 4: one binary search of the directory
            h = probe[2]
            i = bisect_left(hashes, h)
            if i == len(hashes) or hashes[i] != h:
                return None
            return self._entry_at(i, probe)
        bits = self._filter_bits
        if bits:
            h = _key_hash(*probe[0])
            h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
            bloom = self._filter
            for i in range(_PROBES):
                pos = (h1 + i * h2) % bits
                if not bloom[pos >> 3] & (1 << (pos & 7)):
                    return None
        return self._in_block(probe)

    def _in_block(self, probe: KeyProbe) -> bytes | None:
        """The lookup of ``probe`` in the one block its key would be in."""
        target = probe[0]
        b = bisect_right(self._first_keys(), target) - 1
        if b < 0:
            return None
        return self._find(b, target, probe[1])

    def _entry_at(self, i: int, probe: KeyProbe) -> bytes | None:
        """The value of ``probe`` from the entries the directory lists from ``i`` on
        under its hash: the first whose key is the probe's (see :meth:`_entry_bytes`),
        checked against its crc32. Anything else (a hash shared with another key, or
        damage) is settled by the block the key would be in, walked with every entry
        checked: the directory only ever saves work, it never decides an answer alone."""
        hashes, offsets = self._dir_hashes, self._dir_offsets
        assert hashes is not None
        _, pattern, h = probe
        skip = 4 + len(pattern)
        n = len(hashes)
        while i < n and hashes[i] == h:
            at = offsets[i]
            if _HEAD.size <= at < self._end:
                data, p = self._entry_bytes(at, skip)
                if data.startswith(pattern, p + 4):
                    if len(data) < p + skip + 4:
                        break  # cut short: the checked walk says where
                    nxt = p + skip + 4 + _U32.unpack_from(data, p + skip)[0]
                    if (
                        nxt <= len(data)
                        and zlib.crc32(memoryview(data)[p + 4 : nxt])
                        == _CRC.unpack_from(data, p)[0]
                    ):
                        return data[p + skip + 4 : nxt]
                    break  # damaged: the checked walk says where
            i += 1
        return self._in_block(probe)

    def _entry_bytes(self, at: int, skip: int) -> tuple[bytes, int]:
        """Bytes holding the entry at offset ``at`` (whose key takes ``skip`` bytes after
        its crc32), and where in them it starts. Format 5: its block, read whole (one
        ``pread``) and checked against the block's digest. Before: the entry alone, one
        short ``pread`` (a second one for a value longer than the guess)."""
        if self._format >= 5:
            b = bisect_right(self._starts, at) - 1
            return self._block_bytes(b), at - self._starts[b]
        room = self._end - at
        data = self._read(at, min(skip + 4 + _GUESS, room))
        if len(data) >= skip + 4:
            nxt = skip + 4 + _U32.unpack_from(data, skip)[0]
            if len(data) < nxt <= room:
                data = self._read(at, nxt)
        return data, 0

    def _block_bytes(self, b: int) -> bytes:
        """Block ``b``'s bytes, read with one ``pread``; in format 5 checked against its
        digest in the (verified) block index. Why: crc32s only tell damage; an entry
        rewritten in place with a fresh one (a key's newest versions dropped), after
        the open's check and the scrub, was served, and a merge wrote it into a new
        table with a fresh name."""
        starts = self._starts
        at = starts[b]
        data = self._read(at, (starts[b + 1] if b + 1 < len(starts) else self._end) - at)
        if self._format >= 5 and (
            blake3.blake3(data).digest(_BLOCK_DIGEST)
            != self._blocks[self._spots[b] + 8 : self._spots[b] + 8 + _BLOCK_DIGEST]
        ):
            raise CorruptCheckpointError(
                f"table {self.name}: block {b} is not what its index says (changed since "
                "it was written; the log is intact: remove the checkpoint file to rebuild "
                "the state from it)"
            )
        return data

    def _find(self, b: int, target: tuple[bytes, bytes], pattern: bytes) -> bytes | None:
        """The value of ``target`` in block ``b``, or None.

        A lookup's hot loop, over one copy of the block: it steps from entry to entry
        by their lengths alone, and checks the crc32 of the entry it answers with. An
        answer of "absent" (rare: the filter let the key through) walks the block again
        checking every entry, since a damaged key could hide the one asked for. Why
        entries and not a search for the key's bytes: a value may hold bytes that look
        like another key's entry."""
        block = self._block_bytes(b)
        skip = 4 + len(pattern)
        u16, u32 = _U16.unpack_from, _U32.unpack_from
        p = 0
        i = b * self._block_size
        last = min(i + self._block_size, self._count)
        try:
            while i < last:
                if block.startswith(pattern, p + 4):
                    (v,) = u32(block, p + skip)
                    nxt = p + skip + 4 + v
                    (crc,) = _CRC.unpack_from(block, p)
                    if nxt <= len(block) and zlib.crc32(block[p + 4 : nxt]) == crc:
                        return block[p + skip + 4 : nxt]
                    break  # damaged: the checked walk says where
                at = p + 6 + u16(block, p + 4)[0]  # past the namespace
                at += 2 + u16(block, at)[0]  # past the key
                p = at + 4 + u32(block, at)[0]  # past the value
                i += 1
        except struct.error:
            pass  # cut short: the checked walk says where
        return self._checked_find(b, target, block)

    def _checked_find(self, b: int, target: tuple[bytes, bytes], block: bytes) -> bytes | None:
        """:meth:`_find`, checking every entry up to the one that decides."""
        end = len(block)
        p = 0
        i = b * self._block_size
        last = min(i + self._block_size, self._count)
        crc32, unpack = zlib.crc32, _CRC_U16.unpack_from
        while i < last:
            try:
                crc, n = unpack(block, p)
                at = p + 6 + n
                ns = block[p + 6 : at]
                (m,) = _U16.unpack_from(block, at)
                at += 2
                key = block[at : at + m]
                at += m
                (v,) = _U32.unpack_from(block, at)
            except struct.error:
                raise CorruptCheckpointError(f"table {self.name}: entry {i} is cut short") from None
            nxt = at + 4 + v
            if nxt > end or crc32(block[p + 4 : nxt]) != crc:
                raise CorruptCheckpointError(
                    f"table {self.name}: entry {i} fails its check (the log is intact: "
                    "remove the checkpoint file to rebuild the state from it)"
                )
            if (ns, key) >= target:
                return block[at + 4 : nxt] if (ns, key) == target else None
            p = nxt
            i += 1
        return None

    def items(self, namespace: str, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """(key, value) of every key of ``namespace`` (that starts with ``prefix``, if
        given), in key order: read from the block the block index places the range's
        start in, to the range's end (the entries are sorted, and a key starts with the
        prefix exactly when its UTF-8 bytes start with the prefix's)."""
        ns_b, pre = namespace.encode(), prefix.encode()
        self._load_index()
        b = max(bisect_right(self._first_keys(), (ns_b, pre)) - 1, 0)
        while b < len(self._starts):
            for ns, key, value in self._block(b):
                if ns > ns_b:
                    return
                if ns == ns_b:
                    if key.startswith(pre):
                        yield key.decode(), value
                    elif key > pre:
                        return  # past the range
            b += 1

    def entries(self) -> Iterator[tuple[str, str, bytes]]:
        """Every (namespace, key, value), in order."""
        self._load_index()
        for b in range(len(self._starts)):
            for ns, key, value in self._block(b):
                yield ns.decode(), key.decode(), value

    def namespaces(self) -> Iterator[str]:
        """The namespaces the table holds keys of, in order."""
        last = None
        for ns, _, _ in self.entries():
            if ns != last:
                last = ns
                yield ns

    def release(self) -> None:
        """Let go of the memory map (the table is unusable after)."""
        close = getattr(self._data, "close", None)
        if close is not None:
            close()
        if self._release is not None:
            self._release()
