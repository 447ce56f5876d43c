"""The data of remote calls: arguments, answers and errors as CBOR, both ways.

A remote client sends a call's arguments and gets back what the local call returns,
with the same Python types: the library's records (``Version``, ``Stats``, ...) come
back as themselves, tuples as tuples, numpy arrays as arrays, queries and filters as
queries and filters, and an error as the same :class:`koru.KoruError` subclass with
the same attributes, so ``except koru.KeyNotFoundError`` works against either.

Each such type travels under a private CBOR tag (below); everything else is plain
CBOR (int, float, str, bytes, bool, null, lists, maps). Decoding is strict: every tag
cbor2 would decode itself is refused (shared references are a decompression bomb, see
``koru.events``' ``_tags``), a record is rebuilt only from the names listed here, the
grant and identity statements through their own strict decoders, and an error only
as a class of the library's own tree.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cbor2

from koru.events import (
    CodecError,
    Grant,
    KoruError,
    PublicIdentity,
    RemoteFailureError,
    Revocation,
    decodes_within,
    refuse_tags,
)
from koru.nursery import ProcessInfo
from koru.projections import Filter, Group, Query, QueryPlan, Row, filter_from_data

from ._diff import Change, Diff
from ._genome import Genome
from ._indexing import IndexInfo
from ._lineage import Connected
from ._subscriptions import KeyChange
from ._types import Expiring, IngestResult, Refused, Stats, Tiers, Version, Versioned
from ._vectors import VectorHit
from ._viewing import ViewInfo
from ._workspace import WorkspaceInfo

if TYPE_CHECKING:
    import numpy as np

__all__ = ["pack", "pack_error", "unpack"]

# The private tags (unassigned in the IANA registry; this protocol's alone).
_TUPLE = 39990  # [items...]
_RECORD = 39991  # [name, fields...]
_ERROR = 39992  # [class name, message, {attribute: value}]
_ARRAY = 39993  # [dtype, shape, bytes]
_TIME = 39994  # ISO 8601 text (datetime.isoformat)
_QUERY = 39995  # the query's data form
_FILTER = 39996  # the filter's data form
_STATEMENT = 39997  # [kind, body]: a grant, revocation or public identity, signed

#: Records by name; the name is the wire's, so a rename here is a protocol change.
_RECORDS: dict[str, type[tuple[Any, ...]]] = {
    cls.__name__: cls
    for cls in (
        Change, Connected, Diff, Expiring, Genome, Group, IndexInfo, IngestResult,
        KeyChange, ProcessInfo, QueryPlan, Refused, Row, Stats, Tiers, Version, Versioned,
        VectorHit, ViewInfo, WorkspaceInfo,
    )
}  # fmt: skip
_NAMES = {cls: name for name, cls in _RECORDS.items()}
_STATEMENTS: dict[str, Callable[[Any], Any]] = {
    "grant": Grant.decode,
    "revocation": Revocation.decode,
    "identity": PublicIdentity.decode,
}
_STATEMENT_KIND = {Grant: "grant", Revocation: "revocation", PublicIdentity: "identity"}
#: Array element types that travel (vectors are float32; the rest for completeness).
_DTYPES = frozenset({"<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1"})
_PLAIN = (str, int, float, bool, bytes, type(None))

#: What a payload may decode to, estimated (bytes): a CBOR item of one byte decodes to
#: a Python object of 30 to 70 (an empty array is one byte, a list 56 plus its slot),
#: so the 96 MiB a message may hold would decode to some 7 GB, before any capability
#: is checked. Estimated from the items' headers alone, strings skipped.
MAX_DECODED = 256 << 20


def _out(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_out(v) for v in value]
    if kind is dict:
        return {_key(k): _out(v) for k, v in value.items()}
    name = _NAMES.get(kind)
    if name is not None:
        return cbor2.CBORTag(_RECORD, [name, *(_out(v) for v in value)])
    statement = _STATEMENT_KIND.get(kind)
    if statement is not None:
        return cbor2.CBORTag(_STATEMENT, [statement, list(value)])
    if kind is tuple:
        return cbor2.CBORTag(_TUPLE, [_out(v) for v in value])
    # numpy is imported only by a program that uses it (a database that never embeds
    # pays nothing): no array can be sent before it is.
    numpy = sys.modules.get("numpy")
    if numpy is None:
        pass
    elif isinstance(value, numpy.ndarray):
        array = numpy.ascontiguousarray(value)
        if array.dtype.str not in _DTYPES:
            raise CodecError(f"an array of {array.dtype} cannot be sent")
        return cbor2.CBORTag(_ARRAY, [array.dtype.str, list(array.shape), array.tobytes()])
    elif isinstance(value, numpy.generic):
        return _out(value.item())
    if isinstance(value, dt.datetime):
        return cbor2.CBORTag(_TIME, value.isoformat())
    if isinstance(value, Query):
        return cbor2.CBORTag(_QUERY, _out(value.to_data()))
    if isinstance(value, Filter):
        return cbor2.CBORTag(_FILTER, _out(value.to_data()))
    if isinstance(value, list | tuple):  # subclasses (a NamedTuple of the caller's)
        return [_out(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): _out(v) for k, v in value.items()}
    # A subclass (an enum, a str subclass...) travels as its builtin.
    if isinstance(value, int):
        return bool(value) if isinstance(value, bool) else int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    raise CodecError(f"a {kind.__name__} cannot be sent to or from a remote database")


def _key(key: Any) -> Any:
    """A map key: a tuple's tag holds a tuple (hashable), as cbor2 wants of a key."""
    if type(key) is tuple:
        return cbor2.CBORTag(_TUPLE, tuple(_key(k) for k in key))
    return _out(key)


def pack(value: Any) -> bytes:
    """The bytes of ``value`` (see the module doc).

    Raises:
        CodecError: it holds something that cannot travel.
    """
    return cbor2.dumps(_out(value))


def pack_error(exc: KoruError) -> bytes:
    """The bytes of an error raised by the call (its class, message, attributes)."""
    attributes = {k: v for k, v in vars(exc).items() if not k.startswith("_") and type(v) in _PLAIN}
    message = str(exc)
    return cbor2.dumps(cbor2.CBORTag(_ERROR, [type(exc).__name__, message, attributes]))


def _errors() -> dict[str, type[KoruError]]:
    import koru

    found: dict[str, type[KoruError]] = {}
    for name in koru.__all__:
        obj = getattr(koru, name, None)
        if isinstance(obj, type) and issubclass(obj, KoruError):
            found[obj.__name__] = obj
    return found


_ERROR_CLASSES: dict[str, type[KoruError]] = {}


def _error(name: Any, message: Any, attributes: Any) -> KoruError:
    if not _ERROR_CLASSES:
        _ERROR_CLASSES.update(_errors())
    cls = _ERROR_CLASSES.get(name) if type(name) is str else None
    if cls is None or type(message) is not str or type(attributes) is not dict:
        return RemoteFailureError(f"the server raised {name!r}: {message!r}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in attributes.items():
        if type(key) is str and not key.startswith("_"):
            setattr(exc, key, value)
    return exc


def _tuple(body: Any, immutable: bool = False) -> Any:
    if type(body) is not list and type(body) is not tuple:
        raise CodecError("a malformed tuple")
    return tuple(body)


def _record(body: Any, immutable: bool = False) -> Any:
    if type(body) is not list or not body or type(body[0]) is not str:
        raise CodecError("a malformed record")
    cls = _RECORDS.get(body[0])
    if cls is None:
        raise CodecError(f"an unknown record {body[0]!r}")
    try:
        return cls(*body[1:])
    except TypeError as exc:
        raise CodecError(f"a malformed {body[0]}: {exc}") from None


def _statement(body: Any, immutable: bool = False) -> Any:
    read = None
    if type(body) is list and len(body) == 2 and type(body[0]) is str:
        read = _STATEMENTS.get(body[0])
    if read is None:
        raise CodecError("a malformed statement")
    return read(body[1])


def _time(body: Any, immutable: bool = False) -> Any:
    try:
        if type(body) is not str:
            raise ValueError
        return dt.datetime.fromisoformat(body)
    except ValueError:
        raise CodecError(f"a malformed time {body!r}") from None


def _array_of(body: Any, immutable: bool = False) -> Any:
    if type(body) is not list or len(body) != 3:
        raise CodecError("a malformed array")
    return _array(*body)


def _query(body: Any, immutable: bool = False) -> Any:
    return Query.from_data(body)


def _filter(body: Any, immutable: bool = False) -> Any:
    return filter_from_data(body)


def _error_of(body: Any, immutable: bool = False) -> Any:
    if type(body) is not list or len(body) != 3:
        raise CodecError("a malformed error")
    return _error(*body)


def _no_error(body: Any, immutable: bool = False) -> Any:
    raise CodecError("an error where a value was expected")


def _other_tag(tag: Any, immutable: bool = False) -> Any:
    raise CodecError(f"an unexpected CBOR tag {tag.tag}")


def _array(dtype: Any, shape: Any, data: Any) -> np.ndarray[Any, Any]:
    if (
        dtype not in _DTYPES
        or type(shape) is not list
        or len(shape) > 8
        or not all(type(n) is int and n >= 0 for n in shape)
        or type(data) is not bytes
    ):
        raise CodecError("a malformed array")
    import numpy as np

    array = np.frombuffer(data, dtype=np.dtype(dtype))
    count = 1
    for n in shape:
        count *= n
    if count != array.size:
        raise CodecError(f"an array of {array.size} items cannot have the shape {shape}")
    return array.reshape(shape)


_OURS = {
    _TUPLE: _tuple,
    _RECORD: _record,
    _STATEMENT: _statement,
    _ARRAY: _array_of,
    _TIME: _time,
    _QUERY: _query,
    _FILTER: _filter,
}
#: cbor2 hands a tag's decoded contents to its decoder here (the built-in tags refused).
_VALUES = refuse_tags({**_OURS, _ERROR: _no_error})
_ANSWERS = refuse_tags({**_OURS, _ERROR: _error_of})


def unpack(data: bytes, *, errors: bool = False) -> Any:
    """What :func:`pack` (or, with ``errors``, :func:`pack_error`) packed.

    Raises:
        CodecError: not a packed value, or one that would decode to more than
            ``MAX_DECODED`` bytes; and any error of the statements' or queries' own
            strict decoders (``InvalidQueryError``, ``SignatureError``...).
    """
    if not decodes_within(data, MAX_DECODED, strings=True):
        raise CodecError(f"a remote payload that would decode to over {MAX_DECODED} bytes")
    try:
        return cbor2.loads(
            data,
            tag_hook=_other_tag,
            semantic_decoders=_ANSWERS if errors else _VALUES,
            max_depth=200,
        )
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__
        if isinstance(cause, KoruError):  # cbor2 wraps what a hook raises
            raise cause from None
        raise CodecError(f"a malformed remote payload: {exc}") from None
    except RecursionError:
        raise CodecError("a remote payload nested too deep") from None
