"""Every size limit of the format, in one place.

The writer checks each limit before a write is acknowledged and the reader enforces
the same numbers, so nothing can be written that a later open would refuse. Changing
one of these changes what a valid log is: the reader of an older log must still accept
what its writer could write.
"""

from __future__ import annotations

__all__ = [
    "MAX_EVENT_SIZE",
    "MAX_NAME_BYTES",
    "MAX_SEGMENT_SIZE",
    "MAX_VALUE_DEPTH",
    "MAX_VALUE_SIZE",
    "MIN_SEGMENT_SIZE",
]

#: Largest encoded event, in bytes (a batch's values together stay under it).
MAX_EVENT_SIZE = 64 * 1024 * 1024
#: Largest encoded value, in bytes; a database may set a smaller limit of its own.
MAX_VALUE_SIZE = 16 * 1024 * 1024
#: Longest namespace or key, in UTF-8 bytes.
MAX_NAME_BYTES = 1024
#: Deepest nesting of lists and dicts in a value.
MAX_VALUE_DEPTH = 64
#: Bounds of a segment file's size: a location packs the byte offset into 32 bits.
MIN_SEGMENT_SIZE = 128
MAX_SEGMENT_SIZE = 2**32 - 1
