"""koru-delta: the invisible database.

A zero-configuration, causal, versioned, event-sourced database for Trio
applications::

    import koru, trio

    async def main():
        async with koru.open() as db:
            await db.put("users", "alice", {"name": "Alice", "age": 30})
            print(await db.get("users", "alice"))

    trio.run(main)
"""

from ._cache import DEFAULT_CACHE_BYTES as DEFAULT_CACHE_BYTES
from ._database import Database as Database
from ._diff import Change as Change
from ._diff import Diff as Diff
from ._errors import CodecError as CodecError
from ._errors import CorruptCheckpointError as CorruptCheckpointError
from ._errors import CorruptLogError as CorruptLogError
from ._errors import DatabaseClosedError as DatabaseClosedError
from ._errors import DatabaseLockedError as DatabaseLockedError
from ._errors import DurabilityError as DurabilityError
from ._errors import InvalidDataError as InvalidDataError
from ._errors import KeyNotFoundError as KeyNotFoundError
from ._errors import KoruError as KoruError
from ._errors import NotFoundError as NotFoundError
from ._errors import NoValueAtTimeError as NoValueAtTimeError
from ._errors import ReadOnlyError as ReadOnlyError
from ._errors import StorageError as StorageError
from ._errors import VersionNotFoundError as VersionNotFoundError
from ._names import MAX_NAME_BYTES as MAX_NAME_BYTES
from ._open import DEFAULT_SYNC as DEFAULT_SYNC
from ._open import MEMORY as MEMORY
from ._open import default_path as default_path
from ._open import open as open
from ._types import Stats as Stats
from ._types import Version as Version
from ._types import Versioned as Versioned
from .nursery import Clock as Clock
from .nursery import SystemClock as SystemClock
from .nursery import TrioClock as TrioClock

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_SYNC",
    "MAX_NAME_BYTES",
    "MEMORY",
    "Change",
    "Clock",
    "CodecError",
    "CorruptCheckpointError",
    "CorruptLogError",
    "Database",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "Diff",
    "DurabilityError",
    "InvalidDataError",
    "KeyNotFoundError",
    "KoruError",
    "NoValueAtTimeError",
    "NotFoundError",
    "ReadOnlyError",
    "Stats",
    "StorageError",
    "SystemClock",
    "TrioClock",
    "Version",
    "VersionNotFoundError",
    "Versioned",
    "default_path",
    "open",
]
