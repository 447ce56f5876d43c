"""The fused put path: its encoders give exactly the general codec's bytes (hypothesis),
and a database written through it reads back, replays and folds as the general path
would."""

from __future__ import annotations

from typing import Any

import blake3
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import digest_of, full_replay
from koru import InvalidDataError
from koru.events import (
    STORAGE,
    BatchEvent,
    ExpiringPutEvent,
    FileStore,
    PutEncoder,
    PutEvent,
    Write,
    content_id,
    decode_event,
    encode_event,
    encode_value,
    put_value,
)
from koru.events._cbor_parts import encode_flat
from koru.events._values import _check

U64 = 2**64 - 1

flat_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64) - 3, max_value=U64 + 3)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
names = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode("utf-8", "replace")) > 0)
ids = st.none() | st.binary(min_size=32, max_size=32)


def general_value_bytes(value: Any) -> bytes:
    """What the general walk encodes (the path every non-flat value takes)."""
    return bytes(cbor2.dumps(_check(value, 0)))


@given(st.dictionaries(st.text(max_size=30), flat_scalars, max_size=30))
@settings(max_examples=400)
def test_flat_dicts_encode_as_the_general_walk(value: dict[str, Any]) -> None:
    try:
        expected: bytes | None = general_value_bytes(value)
    except (InvalidDataError, UnicodeEncodeError):
        expected = None  # the general path refuses it: the fast one must not accept it
    try:
        fast = encode_flat(value)
    except UnicodeEncodeError:
        fast = None
        assert expected is None
    if fast is not None:
        assert fast == expected
        assert cbor2.loads(fast) == value
    if expected is not None and len(value) < 24:
        assert fast == expected  # every flat dict the general path takes is fused
    # And the public encoder agrees with the general walk whichever path it takes.
    if expected is not None:
        assert encode_value(value) == expected


def test_flat_encoder_declines_what_it_does_not_know() -> None:
    assert encode_flat({1: "a"}) is None  # type: ignore[dict-item]
    assert encode_flat({"a": 1.5}) is None
    assert encode_flat({"a": [1]}) is None
    assert encode_flat({"a": 2**64}) is None
    assert encode_flat({"a": -(2**64) - 1}) is None
    assert encode_flat({f"k{i}": i for i in range(24)}) is None
    # ... and the public encoder still raises the general path's errors.
    with pytest.raises(InvalidDataError):
        encode_value({"a": 2**64})
    with pytest.raises(InvalidDataError):
        encode_value({1: "a"})
    with pytest.raises(InvalidDataError):
        encode_value({"a": "\ud800"})
    with pytest.raises(InvalidDataError):
        encode_value({"\ud800": 1})


def test_flat_encoder_key_order_is_per_key_tuple() -> None:
    # The same keys in two orders encode alike (canonical order), as their values do.
    a = encode_value({"name": "x", "age": 3, "é": None, "zz": True})
    b = encode_value({"zz": True, "é": None, "age": 3, "name": "x"})
    assert a == b == general_value_bytes({"age": 3, "name": "x", "é": None, "zz": True})


@given(
    origin=st.binary(min_size=16, max_size=16),
    seq=st.integers(min_value=1, max_value=U64),
    prev=st.binary(min_size=32, max_size=32),
    hlc=st.integers(min_value=0, max_value=U64),
    namespace=names,
    key=names,
    value=st.binary(max_size=300),
    previous=ids,
    expires=st.none() | st.integers(min_value=1, max_value=U64),
)
@settings(max_examples=400)
def test_put_encoder_gives_encode_event_bytes(
    origin: bytes,
    seq: int,
    prev: bytes,
    hlc: int,
    namespace: str,
    key: str,
    value: bytes,
    previous: bytes | None,
    expires: int | None,
) -> None:
    p = None if seq == 1 else prev
    try:
        namespace.encode()
        key.encode()
    except UnicodeEncodeError:
        return  # names are checked before either encoder sees them
    header = (origin, STORAGE, seq, p, hlc, namespace, key, value, previous)
    event = PutEvent(*header) if expires is None else ExpiringPutEvent(*header, expires)
    fused = PutEncoder(origin).encode(seq, p, hlc, namespace, key, value, previous, expires)
    assert fused == encode_event(event)
    assert decode_event(fused) == event


@given(
    origin=st.binary(min_size=16, max_size=16),
    seq=st.integers(min_value=1, max_value=U64),
    prev=st.binary(min_size=32, max_size=32),
    hlc=st.integers(min_value=0, max_value=U64),
    writes=st.lists(
        st.tuples(names, names, st.binary(max_size=300), ids),
        min_size=1,
        max_size=30,
        unique_by=lambda w: (w[0], w[1]),  # a batch writes each key once
    ),
)
@settings(max_examples=300)
def test_put_encoder_batches_give_encode_event_bytes(
    origin: bytes,
    seq: int,
    prev: bytes,
    hlc: int,
    writes: list[tuple[str, str, bytes, bytes | None]],
) -> None:
    """The batch a group-commit round appends (``PutEncoder.encode_batch``): exactly
    the general codec's bytes, and it decodes to the same event."""
    p = None if seq == 1 else prev
    try:
        for namespace, key, _, _ in writes:
            namespace.encode()
            key.encode()
    except UnicodeEncodeError:
        return  # names are checked before either encoder sees them
    items = tuple(Write(*w) for w in writes)
    event = BatchEvent(origin, STORAGE, seq, p, hlc, items)
    fused = PutEncoder(origin).encode_batch(seq, p, hlc, items)
    assert fused == encode_event(event)
    assert decode_event(fused) == event


def test_put_encoder_batches_refuse_tombstones_and_expiries() -> None:
    encoder = PutEncoder(bytes(16))
    with pytest.raises(InvalidDataError):
        encoder.encode_batch(1, None, 5, [Write("n", "k", None, None)])
    with pytest.raises(InvalidDataError):
        encoder.encode_batch(1, None, 5, [Write("n", "k", b"\x01", None, 9)])


@pytest.mark.parametrize("expires", [0, -1, 2**64, 1.5, True])
def test_put_encoder_refuses_an_expiry_the_decoder_refuses(expires: Any) -> None:
    with pytest.raises(InvalidDataError, match="expires"):
        PutEncoder(bytes(16)).encode(1, None, 5, "n", "k", b"\x01", None, expires)


@pytest.mark.parametrize(("seq", "hlc"), [(0, 5), (2**64, 5), (1, -1), (1, 2**64)])
def test_put_encoder_refuses_what_encode_event_refuses(seq: int, hlc: int) -> None:
    origin = bytes(16)
    event = PutEvent(origin, STORAGE, seq, None, hlc, "n", "k", b"\x01", None)
    with pytest.raises(InvalidDataError) as general:
        encode_event(event)
    with pytest.raises(InvalidDataError) as fused:
        PutEncoder(origin).encode(seq, None, hlc, "n", "k", b"\x01", None)
    assert str(fused.value) == str(general.value)


@given(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=30))
def test_content_id_memo_never_pairs_a_value_with_another_id(picks: list[int]) -> None:
    objects: list[Any] = [b"one", b"two", bytearray(b"three")]
    for i in picks:
        data = objects[i]
        assert content_id(data) == blake3.blake3(bytes(data)).digest()
        if type(data) is bytearray:
            data += b"!"  # changed in place: the next id must follow the new bytes


async def test_fused_puts_read_back_and_replay_like_general_writes(tmp_path: Any) -> None:
    path = tmp_path / "db"
    values = [
        {"name": "user1", "age": 30, "active": True},  # fused value encoder
        {"score": 1.5, "tags": ["a", "b"]},  # the general walk
        "plain text",
        {"nested": {"a": 1}},
    ]
    async with koru.open(path, sync="os") as db:
        written = [await db.put("users", f"k{i}", v) for i, v in enumerate(values)]
        again = await db.put("users", "k0", {"name": "user1", "age": 31, "active": False})
        assert again.previous == written[0].write_id
        # A put with a time to live takes the same fused path, with its own tag.
        lasting = await db.put("users", "t", {"name": "user2", "age": 1, "active": True}, ttl=60)
        assert lasting.expires == lasting.timestamp + 60 * 10**9
        renewed = await db.put("users", "t", [1, 2], ttl=0.5)
        assert renewed.previous == lasting.write_id
        assert renewed.expires == renewed.timestamp + 5 * 10**8
        assert await db.get("users", "t") == [1, 2]
        written += [lasting, renewed]
        for i, v in enumerate(values[1:], 1):
            assert await db.get("users", f"k{i}") == v
        history = await db.history("users", "k0")
        assert [h.write_id for h in history] == [written[0].write_id, again.write_id]
        # Every record in the log reads back through the strict decoder (it re-encodes
        # with the general codec and compares bytes), and its id is what was returned.
        live = await db.digest()
    ids = set()
    store = FileStore(path, readonly=True)
    try:
        for record in store.records(STORAGE):
            event = decode_event(record.data)
            ids.add(blake3.blake3(encode_event(event)).hexdigest())
    finally:
        store.close()
    assert {v.write_id for v in [*written, again]} <= ids
    kv, _ = full_replay(path)
    assert digest_of(kv) == live
    async with koru.open(path) as db:
        assert await db.get("users", "k0") == {"name": "user1", "age": 31, "active": False}


def test_the_key_order_cache_never_holds_long_keys() -> None:
    from koru.events import _cbor_parts

    long_keys = {"k" * 300: 1, "j": 2}
    assert encode_value(long_keys) == general_value_bytes(long_keys)
    assert tuple(long_keys) not in _cbor_parts._ORDERS
    short = {"zz": 1, "a": 2}
    assert encode_value(short) == general_value_bytes(short)
    assert tuple(short) in _cbor_parts._ORDERS


value_sizes = st.sampled_from([1, 23, 24, 255, 256, 65535, 65536]) | st.integers(1, 300)


@given(
    origin=st.binary(min_size=16, max_size=16),
    seq=st.integers(min_value=1, max_value=U64),
    prev=st.binary(min_size=32, max_size=32),
    hlc=st.integers(min_value=0, max_value=U64),
    namespace=names,
    key=names,
    size=value_sizes,
    previous=ids,
)
@settings(max_examples=300)
def test_put_value_finds_the_value_of_every_plain_put(
    origin: bytes,
    seq: int,
    prev: bytes,
    hlc: int,
    namespace: str,
    key: str,
    size: int,
    previous: bytes | None,
) -> None:
    """What a cold read slices out of a put's record is its value, and only for the
    key and size asked; any other question gets None (the general decode then)."""
    try:
        namespace.encode()
        key.encode()
    except UnicodeEncodeError:
        return
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    p = None if seq == 1 else prev
    event = PutEncoder(origin).encode(seq, p, hlc, namespace, key, value, previous)
    assert put_value(event, namespace, key, size) == value
    assert put_value(event, namespace, key, size - 1) is None
    assert put_value(event, namespace, key, size + 1) is None
    assert put_value(event, namespace, key + "x", size) is None
    assert put_value(event, namespace + "x", key, size) is None
    assert put_value(event[:-1], namespace, key, size) is None
    assert put_value(event + b"\xf6", namespace, key, size) is None
    # Not the storage agent's, or not a put: the general way.
    other = encode_event(PutEvent(origin, "vectors", seq, p, hlc, namespace, key, value, previous))
    assert put_value(other, namespace, key, size) is None
    batch = encode_event(
        BatchEvent(origin, STORAGE, seq, p, hlc, (Write(namespace, key, value, previous),))
    )
    assert put_value(batch, namespace, key, size) is None


@pytest.mark.parametrize("key", ["k", "ключ"])
@pytest.mark.parametrize("previous", [None, bytes(range(32))])
def test_put_value_answers_only_what_the_event_holds(key: str, previous: bytes | None) -> None:
    """Every byte of a put's event set to every value (as a record rewritten with fresh
    checksums would have it: only the content id can tell then): whenever
    ``put_value`` still answers, a full decode of the changed event reads a put of the
    same key with exactly that value, so the bytes it returns are the body's own, never
    bytes of another field that look like them."""
    value = encode_value({"name": "x" * 40, "n": 7})
    event = PutEncoder(bytes(16)).encode(300, bytes(32), 2**62, "ns", key, value, previous)
    answered = 0
    for at in range(len(event)):
        for byte in range(256):
            changed = event[:at] + bytes((byte,)) + event[at + 1 :]
            found = put_value(changed, "ns", key, len(value))
            if found is not None:
                answered += 1
                raw = cbor2.loads(changed)
                assert raw[1] == "put" and raw[3] == STORAGE
                assert raw[7][:3] == ["ns", key, found]
    assert answered > 256  # (the envelope's ids and times, and the value's own bytes)
