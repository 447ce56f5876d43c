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
from ._open import DEFAULT_SYNC as DEFAULT_SYNC
from ._open import MEMORY as MEMORY
from ._open import default_path as default_path
from ._open import open as open
from ._types import Stats as Stats
from ._types import Version as Version
from ._types import Versioned as Versioned
from .events import MAX_NAME_BYTES as MAX_NAME_BYTES
from .events import CodecError as CodecError
from .events import CorruptCheckpointError as CorruptCheckpointError
from .events import CorruptLogError as CorruptLogError
from .events import DatabaseClosedError as DatabaseClosedError
from .events import DatabaseLockedError as DatabaseLockedError
from .events import DataLossError as DataLossError
from .events import DurabilityError as DurabilityError
from .events import InvalidArgumentError as InvalidArgumentError
from .events import InvalidDataError as InvalidDataError
from .events import KeyNotFoundError as KeyNotFoundError
from .events import KoruError as KoruError
from .events import NotFoundError as NotFoundError
from .events import NoValueAtTimeError as NoValueAtTimeError
from .events import ReadOnlyError as ReadOnlyError
from .events import StorageError as StorageError
from .events import VersionNotFoundError as VersionNotFoundError
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
    "DataLossError",
    "Database",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "Diff",
    "DurabilityError",
    "InvalidArgumentError",
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
