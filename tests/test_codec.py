"""Canonical CBOR for events and values: round trips, and every malformed form rejected."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import math
from typing import Any

import blake3
import cbor2
import pytest
from _strategies import U64, values
from hypothesis import given, settings
from hypothesis import strategies as st

from koru import CodecError, InvalidDataError
from koru.events import (
    AGENTS,
    BUILTIN_TAGS,
    MAX_EVENT_SIZE,
    SCHEMA_VERSION,
    BatchEvent,
    DeleteEvent,
    Event,
    ExpireEvent,
    ExpiringBatchEvent,
    ExpiringPutEvent,
    PutEvent,
    Write,
    content_id,
    decode_event,
    decode_trusted,
    decode_value,
    decode_value_strict,
    encode_event,
    encode_value,
    event_id,
    write_id,
)

# -- strategies ----------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
ids = st.binary(min_size=32, max_size=32)
origins = st.binary(min_size=16, max_size=16)
value_bytes = st.builds(encode_value, values)
# Events carry value bytes without decoding them, so any bytes must round trip too.
carried = value_bytes | st.binary(max_size=40)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, str, int, bytes | None, int]:
    seq = draw(st.just(1) | st.integers(min_value=1, max_value=U64))
    prev = None if seq == 1 else draw(ids)
    agent = draw(st.sampled_from(AGENTS) | names)
    return draw(origins), agent, seq, prev, draw(st.integers(min_value=0, max_value=U64))


writes = st.builds(Write, names, names, st.none() | carried, st.none() | ids, st.none())
expiries = st.integers(min_value=1, max_value=U64)


@st.composite
def events(draw: st.DrawFn, values_strategy: st.SearchStrategy[bytes] = carried) -> Event:
    header = draw(headers())
    kind = draw(st.sampled_from(["put", "delete", "batch", "put-ttl", "batch-ttl", "expire"]))
    if kind == "put":
        return PutEvent(
            *header, draw(names), draw(names), draw(values_strategy), draw(st.none() | ids)
        )
    if kind == "put-ttl":
        return ExpiringPutEvent(
            *header,
            draw(names),
            draw(names),
            draw(values_strategy),
            draw(st.none() | ids),
            draw(expiries),
        )
    if kind == "delete":
        return DeleteEvent(*header, draw(names), draw(names), draw(st.none() | ids))
    if kind == "expire":
        return ExpireEvent(*header, draw(names), draw(names), draw(ids))
    value = values_strategy if kind == "batch-ttl" else st.none() | values_strategy
    items = draw(
        st.lists(
            st.builds(Write, names, names, value, st.none() | ids, st.none()),
            min_size=1,
            max_size=5,
            unique_by=lambda w: (w.namespace, w.key),
        )
    )
    if kind == "batch-ttl":
        return ExpiringBatchEvent(*header, draw(expiries), tuple(items))
    return BatchEvent(*header, tuple(items))


def same(a: Any, b: Any) -> bool:
    """Equality that also tells 1, 1.0 and True apart, and 0.0 from -0.0."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- value round trips ---------------------------------------------------------------------


@given(values)
def test_value_round_trip(value: Any) -> None:
    data = encode_value(value)
    assert same(decode_value_strict(data), value)
    assert same(decode_value(data), value)
    assert encode_value(decode_value_strict(data)) == data
    assert content_id(data) == blake3.blake3(data).digest()


@given(values)
@settings(max_examples=300)
def test_fast_canonical_path_equals_cbor2_canonical(value: Any) -> None:
    # encode_value sorts map keys itself and uses a plain dumps unless floats appear;
    # the bytes must be exactly cbor2's canonical encoding either way.
    assert encode_value(value) == cbor2.dumps(value, canonical=True)


@given(st.dictionaries(st.text(max_size=6), values, min_size=2, max_size=6), st.randoms())
def test_dict_order_does_not_change_the_bytes(value: dict[str, Any], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert encode_value(dict(items)) == encode_value(value)


@pytest.mark.parametrize(
    "value",
    [
        -(2**64),
        U64,
        math.inf,
        -math.inf,
        -0.0,
        b"",
        "",
        [],
        {},
        {"": None},
    ],
    ids=repr,
)
def test_boundary_values_are_accepted(value: Any) -> None:
    assert same(decode_value_strict(encode_value(value)), value)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    value = _deep_list(64)
    assert decode_value_strict(encode_value(value)) == value


def test_max_size_is_inclusive() -> None:
    data = encode_value("x" * 100)
    assert encode_value("x" * 100, len(data)) == data
    assert decode_value_strict(data, len(data)) == "x" * 100


# -- event round trips ---------------------------------------------------------------------


@given(events())
def test_event_round_trip(event: Event) -> None:
    data = encode_event(event)
    decoded = decode_event(data)
    assert type(decoded) is type(event)
    assert decoded == event
    assert encode_event(decoded) == data
    assert event_id(data) == blake3.blake3(data).digest()


@given(events(values_strategy=value_bytes))
def test_event_round_trip_checking_values(event: Event) -> None:
    data = encode_event(event)
    assert decode_event(data, check_values=True) == event


@given(ids, st.integers(min_value=1, max_value=1000))
def test_write_ids(eid: bytes, index: int) -> None:
    assert write_id(eid, 0) == eid
    assert write_id(eid, index) == blake3.blake3(eid + index.to_bytes(4, "big")).digest()
    assert write_id(eid, index) != write_id(eid, index + 1)


def test_event_bytes_follow_the_documented_wire_form() -> None:
    origin, prev, value = bytes(16), bytes(range(32)), encode_value({"a": 1})
    event = PutEvent(origin, "storage", 2, prev, 99, "ns", "k", value, None)
    assert cbor2.loads(encode_event(event)) == [
        SCHEMA_VERSION,
        "put",
        origin,
        "storage",
        2,
        prev,
        99,
        ["ns", "k", value, None],
    ]


# -- malformed events ----------------------------------------------------------------------

O16 = bytes(range(16))
P32 = bytes(range(100, 132))
VAL = encode_value("x")
BODY: list[Any] = ["ns", "k", VAL, None]


def env(
    *,
    version: Any = SCHEMA_VERSION,
    tag: Any = "put",
    origin: Any = O16,
    agent: Any = "storage",
    seq: Any = 2,
    prev: Any = P32,
    hlc: Any = 7,
    body: Any = None,
    extra: tuple[Any, ...] = (),
    drop: int = 0,
) -> bytes:
    """An envelope built item by item, each overridable: cbor2 encodes it minimally."""
    items = [version, tag, origin, agent, seq, prev, hlc, BODY if body is None else body]
    items = items[: len(items) - drop] + list(extra)
    return cbor2.dumps(items)


def raw(
    *,
    head: bytes = b"\x88",
    version: bytes = b"\x01",
    tag: bytes = b"\x63put",
    seq: bytes = b"\x02",
    hlc: bytes = b"\x07",
    body: bytes | None = None,
    tail: bytes = b"",
) -> bytes:
    """An envelope spliced from raw CBOR items, to write non-canonical encodings."""
    parts = [
        version,
        tag,
        cbor2.dumps(O16),
        cbor2.dumps("storage"),
        seq,
        cbor2.dumps(P32),
        hlc,
        cbor2.dumps(BODY) if body is None else body,
    ]
    return head + b"".join(parts) + tail


GOOD = env()


def test_the_malformed_table_starts_from_a_valid_event() -> None:
    assert raw() == GOOD
    assert decode_event(GOOD) == PutEvent(O16, "storage", 2, P32, 7, "ns", "k", VAL, None)


def _deep(n: int) -> bytes:
    return b"\x81" * n + b"\x01"


MALFORMED_EVENTS: list[tuple[str, bytes]] = [
    # non-canonical encodings of a well-formed event
    ("non-minimal seq", raw(seq=b"\x18\x02")),
    ("non-minimal version", raw(version=b"\x19\x00\x01")),
    ("non-minimal hlc", raw(hlc=b"\x1a\x00\x00\x00\x07")),
    ("non-minimal array length", raw(head=b"\x98\x08")),
    ("non-minimal string length", raw(tag=b"\x78\x03put")),
    ("bignum tag for a small int", raw(seq=b"\xc2\x41\x02")),
    ("indefinite-length envelope", raw(head=b"\x9f", tail=b"\xff")),
    ("indefinite-length body", raw(body=b"\x9f" + cbor2.dumps(BODY)[1:] + b"\xff")),
    ("indefinite-length text", raw(tag=b"\x7f\x63put\xff")),
    ("indefinite-length chunked text", raw(tag=b"\x7f\x62pu\x61t\xff")),
    ("indefinite-length map as body", raw(body=b"\xbf\x61a\x01\xff")),
    ("trailing byte", GOOD + b"\x00"),
    ("two events", GOOD + GOOD),
    ("truncated", GOOD[:-1]),
    ("empty input", b""),
    ("self-describe tag around the event", b"\xd9\xd9\xf7" + GOOD),
    ("datetime tag as hlc", raw(hlc=b"\xc1\x07")),
    ("float hlc", raw(hlc=b"\xf9\x47\x00")),
    ("invalid utf-8 in the type tag", raw(tag=b"\x63p\xffq")),
    ("deeply nested hlc", raw(hlc=_deep(1000))),
    ("too deep for an envelope", env(body=[[[["ns"]]]])),
    # unknown things
    ("unknown event type", env(tag="frob")),
    ("event type as int", env(tag=1)),
    ("schema version 2", env(version=2)),
    ("schema version 0", env(version=0)),
    ("schema version true", env(version=True)),
    ("schema version float", env(version=1.0)),
    ("schema version text", env(version="1")),
    # arity
    ("envelope of 7 items", env(drop=1)),
    ("envelope of 9 items", env(extra=(0,))),
    ("not an array", cbor2.dumps({"version": 1})),
    ("put body of 3", env(body=["ns", "k", VAL])),
    ("put body of 5", env(body=["ns", "k", VAL, None, None])),
    ("delete body of 2", env(tag="delete", body=["ns", "k"])),
    ("delete body of 4", env(tag="delete", body=["ns", "k", None, None])),
    ("batch item of 3", env(tag="batch", body=[["ns", "k", VAL]])),
    ("batch item of 5", env(tag="batch", body=[["ns", "k", VAL, None, None]])),
    ("body is a map", env(body={"ns": "k"})),
    ("body is text", env(body="ns")),
    ("batch item is text", env(tag="batch", body=["ns"])),
    # field types
    ("origin as text", env(origin="o" * 16)),
    ("origin of 15 bytes", env(origin=bytes(15))),
    ("origin of 17 bytes", env(origin=bytes(17))),
    ("empty origin", env(origin=b"")),
    ("agent as bytes", env(agent=b"storage")),
    ("empty agent", env(agent="")),
    ("seq as text", env(seq="2")),
    ("seq zero", env(seq=0, prev=None)),
    ("seq negative", env(seq=-1)),
    ("seq over 64 bits", env(seq=2**64)),
    ("hlc negative", env(hlc=-1)),
    ("hlc over 64 bits", env(hlc=2**64)),
    ("hlc null", env(hlc=None)),
    ("prev of 31 bytes", env(prev=bytes(31))),
    ("prev as text", env(prev="p" * 32)),
    ("prev not null at seq 1", env(seq=1, prev=P32)),
    ("prev null after seq 1", env(seq=2, prev=None)),
    ("empty namespace", env(body=["", "k", VAL, None])),
    ("namespace as bytes", env(body=[b"ns", "k", VAL, None])),
    ("key as int", env(body=["ns", 5, VAL, None])),
    ("empty key", env(tag="delete", body=["ns", "", None])),
    ("put value as text", env(body=["ns", "k", "x", None])),
    ("put value null", env(body=["ns", "k", None, None])),
    ("put previous of 31 bytes", env(body=["ns", "k", VAL, bytes(31)])),
    ("delete previous as text", env(tag="delete", body=["ns", "k", "p" * 32])),
    ("batch value as int", env(tag="batch", body=[["ns", "k", 5, None]])),
    ("batch previous of 33 bytes", env(tag="batch", body=[["ns", "k", VAL, bytes(33)]])),
    # batch rules
    ("empty batch", env(tag="batch", body=[])),
    (
        "batch writing the same key twice",
        env(tag="batch", body=[["ns", "k", VAL, None], ["ns", "k", None, None]]),
    ),
]


@pytest.mark.parametrize(
    "data", [d for _, d in MALFORMED_EVENTS], ids=[name for name, _ in MALFORMED_EVENTS]
)
def test_malformed_event_is_rejected(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_event(data)


# Past the encoding problems (which only the canonical re-encoding catches), every entry
# is an event no valid log holds: the trusted decoder of replay must refuse each too.
_FIELD_LEVEL = [name for name, _ in MALFORMED_EVENTS]
_FIELD_LEVEL = _FIELD_LEVEL[_FIELD_LEVEL.index("unknown event type") :]


@pytest.mark.parametrize(
    "data",
    [d for name, d in MALFORMED_EVENTS if name in _FIELD_LEVEL],
    ids=_FIELD_LEVEL,
)
def test_the_trusted_decoder_rejects_malformed_fields(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_trusted(data)


def test_batch_may_write_the_same_key_in_two_namespaces() -> None:
    event = decode_event(env(tag="batch", body=[["a", "k", VAL, None], ["b", "k", None, None]]))
    assert [(w.namespace, w.key) for w in event.writes] == [("a", "k"), ("b", "k")]


def test_oversized_event_is_rejected_before_decoding() -> None:
    with pytest.raises(CodecError, match="limit"):
        decode_event(b"\x00" * (MAX_EVENT_SIZE + 1))


@pytest.mark.parametrize(
    "value",
    [b"\x18\x01", b"\xf9\x7e\x00", b"\xa1\x01\x02", b"\x9f\x01\xff", b"", b"\x01\x00"],
    ids=["non-minimal", "nan", "int key", "indefinite", "empty", "trailing"],
)
def test_check_values_rejects_a_bad_carried_value(value: bytes) -> None:
    data = env(body=["ns", "k", value, None])
    # Without the check, values travel opaque: the event itself is well formed.
    assert decode_event(data).writes[0].value == value
    with pytest.raises(CodecError):
        decode_event(data, check_values=True)


# -- malformed values ----------------------------------------------------------------------

MALFORMED_VALUES: list[tuple[str, bytes]] = [
    ("duplicate map keys", bytes.fromhex("a2 6161 01 6161 02")),
    ("unsorted map keys", bytes.fromhex("a2 6162 01 6161 02")),
    ("bytewise rather than length-first key order", bytes.fromhex("a2 626161 01 6162 02")),
    ("duplicate keys in a nested map", bytes.fromhex("81 a2 6161 01 6161 01")),
    ("non-minimal int", bytes.fromhex("1801")),
    ("non-minimal negative int", bytes.fromhex("3800")),
    ("non-minimal string length", bytes.fromhex("780161")),
    ("non-minimal array length", bytes.fromhex("980101")),
    ("float64 where float16 is exact", bytes.fromhex("fb3ff0000000000000")),
    ("float32 where float16 is exact", bytes.fromhex("fa3fc00000")),
    ("indefinite-length array", bytes.fromhex("9f01ff")),
    ("indefinite-length map", bytes.fromhex("bf616101ff")),
    ("indefinite-length text", bytes.fromhex("7f6161ff")),
    ("indefinite-length bytes", bytes.fromhex("5f4161ff")),
    ("trailing bytes", bytes.fromhex("0100")),
    ("truncated", bytes.fromhex("8201")),
    ("empty input", b""),
    ("invalid utf-8", bytes.fromhex("62fffe")),
    ("datetime tag", bytes.fromhex("c11a00000001")),
    ("bignum tag for a small int", bytes.fromhex("c24101")),
    ("bignum over 64 bits", bytes.fromhex("c249010000000000000000")),
    ("unknown tag", bytes.fromhex("d86301")),
    ("self-describe tag", bytes.fromhex("d9d9f701")),
    ("undefined", bytes.fromhex("f7")),
    ("simple value", bytes.fromhex("e0")),
    ("half-float NaN", bytes.fromhex("f97e00")),
    ("float64 NaN", bytes.fromhex("fb7ff8000000000000")),
    ("NaN inside a list", bytes.fromhex("82 01 f97e00")),
    ("NaN inside a map", bytes.fromhex("a1 6161 f97e00")),
    ("int key", bytes.fromhex("a10102")),
    ("bytes key", bytes.fromhex("a1416102")),
    ("null key", bytes.fromhex("a1f602")),
    ("int key in a nested map", bytes.fromhex("a1 6161 a1 01 02")),
    ("nested one level too deep", _deep(65)),
    ("nested far too deep", _deep(10_000)),
]


@pytest.mark.parametrize(
    "data", [d for _, d in MALFORMED_VALUES], ids=[name for name, _ in MALFORMED_VALUES]
)
def test_malformed_value_is_rejected(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_value_strict(data)


def test_oversized_value_is_rejected() -> None:
    data = encode_value(list(range(100)))
    with pytest.raises(CodecError):
        decode_value_strict(data, len(data) - 1)


# -- values encode_value refuses -----------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 1


def _deep_list(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


def _nested(n: int) -> Any:
    value: Any = 1
    for i in range(n):
        value = [value] if i % 2 else {"k": value}
    return value


BAD_VALUES: list[tuple[str, Any]] = [
    ("set", {1, 2}),
    ("frozenset", frozenset()),
    ("tuple", (1, 2)),
    ("tuple in a list", [1, (2,)]),
    ("set in a dict", {"a": {1}}),
    ("NaN", math.nan),
    ("NaN in a list", [1.0, math.nan]),
    ("NaN in a dict", {"a": {"b": math.nan}}),
    ("int 2**64", 2**64),
    ("int below -2**64", -(2**64) - 1),
    ("huge int in a list", [2**100]),
    ("int key", {1: "x"}),
    ("bytes key", {b"k": "x"}),
    ("tuple key", {(1, 2): "x"}),
    ("int key nested", {"a": [{1: "x"}]}),
    ("65 levels of lists", _deep_list(65)),
    ("65 levels of dicts and lists", _nested(65)),
    ("bytearray", bytearray(b"x")),
    ("memoryview", memoryview(b"x")),
    ("datetime", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ("int enum", Colour.RED),
    ("object", object()),
]


@pytest.mark.parametrize("value", [v for _, v in BAD_VALUES], ids=[n for n, _ in BAD_VALUES])
def test_encode_value_rejects(value: Any) -> None:
    with pytest.raises(InvalidDataError):
        encode_value(value)


def test_encode_value_rejects_over_max_size() -> None:
    with pytest.raises(InvalidDataError):
        encode_value("x" * 100, 100)
    with pytest.raises(InvalidDataError):
        encode_value({"list": list(range(1000))}, 1000)


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536, 70000])
def test_cbor_head_matches_cbor2(n: int) -> None:
    from koru.events import cbor_head

    assert cbor2.dumps([None] * n) == cbor_head(4, n) + b"\xf6" * n
    as_map = {str(i): None for i in range(n)}
    assert cbor2.dumps(as_map).startswith(cbor_head(5, n))


@given(st.dictionaries(st.text(max_size=5), st.dictionaries(st.text(max_size=5), values)))
@settings(max_examples=60)
def test_checkpoint_pieces_are_one_cbor_document(state: dict[str, Any]) -> None:
    # The checkpoint encoder assembles maps from separately encoded pieces; whatever
    # the piece size, the result must be exactly cbor2's encoding of the whole.
    from koru.projections import encode_captured

    captured = {
        "format": 3,
        "sections": {"kv": [1, {"ns": state, "live": 3}], "feeds": [2, [[b"o", state]]]},
        "hlc": 7,
    }
    for chunk in (1, 2, 1000):
        pieces, written = encode_captured(captured, chunk=chunk)
        assert b"".join(pieces[2:]) == cbor2.dumps(captured) and written == {}
        assert pieces[1] == blake3.blake3(b"".join(pieces[2:])).digest()


def test_a_newer_envelope_is_read_through_its_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam Auth and Peers will use: a version-2 envelope (here: version 1's fields
    and a trailing signature) gets a layout that upcasts it to the current model; its
    id stays blake3 of its own bytes, version-1 events read as before, and the trusted
    decoder takes the strict path for it."""
    from koru.events import _codec

    def v2(raw: list[Any]) -> Any:
        if len(raw) != 9 or type(raw[8]) is not bytes or len(raw[8]) != 64:
            raise CodecError("a version-2 event ends with a 64-byte signature")
        return _codec._decode_v1([1, *raw[1:8]])

    signed = env(version=2, extra=(b"s" * 64,))
    with pytest.raises(CodecError, match="unsupported event schema version 2"):
        decode_event(signed)
    monkeypatch.setitem(_codec._LAYOUTS, 2, v2)
    assert decode_event(signed) == decode_event(env()) == decode_trusted(signed)
    assert event_id(signed) != event_id(env())
    with pytest.raises(CodecError, match="signature"):
        decode_event(env(version=2))


# -- tags: shared references are a decompression bomb ------------------------------------


def _tags_cbor2_decodes() -> list[int]:
    found = []
    for tag in [*range(2048), 55799, 55800, 1 << 20]:
        hooked: list[int] = []

        def hook(decoder: Any, value: Any, hooked: list[int] = hooked) -> None:
            hooked.append(1)

        with contextlib.suppress(Exception):  # its own decoder refused the 0: still its own
            cbor2.loads(cbor2.dumps(cbor2.CBORTag(tag, 0)), tag_hook=hook)
        if not hooked:
            found.append(tag)
    return found


def test_every_tag_cbor2_decodes_itself_is_refused() -> None:
    # A newer cbor2 that decodes one more tag fails here until the list names it.
    assert _tags_cbor2_decodes() == list(BUILTIN_TAGS)


def _bombs() -> dict[str, bytes]:
    deep: Any = [0]
    for _ in range(30):
        deep = [deep, deep]  # 2**30 leaves
    wide: Any = [0] * 1000
    for _ in range(3):
        wide = [wide] * 1000  # 10**12 leaves, depth 4
    return {
        "deep": cbor2.dumps(deep, value_sharing=True),
        "wide": cbor2.dumps(wide, value_sharing=True),
    }


@pytest.mark.parametrize("name", ["deep", "wide"])
def test_a_shared_reference_bomb_is_refused_at_once(name: str) -> None:
    from koru.nursery._wire import WireError, decode

    bomb = _bombs()[name]
    assert len(bomb) < 20_000
    with pytest.raises(CodecError):
        decode_value_strict(bomb)
    with pytest.raises(WireError):
        decode(bomb)
    with pytest.raises(CodecError):
        decode_event(bomb)
    # Inside an event, as a peer would send it: the value is refused, not walked.
    event = PutEvent(b"\x01" * 16, "kv", 1, None, 5, "ns", "k", bomb, None)
    with pytest.raises(CodecError):
        decode_event(encode_event(event), check_values=True)
