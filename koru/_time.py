"""Turning the ways a user names a moment into hybrid-logical-clock nanoseconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from koru.events import InvalidDataError

if TYPE_CHECKING:
    import datetime as _dt

__all__ = ["to_ns"]


def to_ns(at: _dt.datetime | str | int, *, end: bool = True) -> int:
    """Nanoseconds since the Unix epoch for a datetime, an ISO-8601 string or an int.

    Datetimes and strings must carry a UTC offset (``...Z`` or ``+02:00``): a naive
    time is ambiguous, and guessing would silently travel to the wrong moment. They
    name a whole microsecond; ``end`` picks its last nanosecond (for "as of" and upper
    bounds, so ``get_at(v.datetime)`` finds ``v``) or, if False, its first (for lower
    bounds). Ints are exact.

    Raises:
        InvalidDataError: a naive time, an unparsable string, or another type.
    """
    if type(at) is int:
        return at
    import datetime as _dt  # (here: a read that names no time does not import it)

    if isinstance(at, str):
        try:
            at = _dt.datetime.fromisoformat(at)
        except ValueError:
            raise InvalidDataError(f"not an ISO-8601 time: {at!r}") from None
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidDataError(
                f"time {at.isoformat()} has no UTC offset; add one (e.g. 'Z' or '+00:00')"
            )
        delta = at - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        ns = (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
        return ns + 999 if end else ns
    raise InvalidDataError(
        f"a time must be a datetime, an ISO-8601 string or int nanoseconds, not {type(at).__name__}"
    )
