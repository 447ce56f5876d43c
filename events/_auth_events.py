"""Events of the identity agent: identities, grants, revocations, and seals.

They sync like any data (peer sync, export and import take them through the ingest
path), and each decoder checks its statement's signature (see
:mod:`koru.events._statements`): a forged grant, revocation or seal is not a valid
event, so it is refused where it enters and never stored. Whether a grant *takes
effect* (is its granter entitled to give it?) is decided later, against the grants
and revocations a database holds (``koru.projections.AuthState``).

A **seal** is how a node proves the events it wrote: a signed list of points
``(agent, seq, event id)`` of its own feeds. Each feed is a hash chain (every event
names its predecessor's id), so a signed point vouches for that event and every event
before it in its feed, and the seal's own header (origin, seq, prev) is signed too,
covering the identity feed it sits in. The signer's public key travels in the seal and
must derive the seal's origin (:func:`~koru.events._keys.node_id_of`): nobody else can
seal a node's feeds. Writing stays free of signatures (one Ed25519 signature costs
about twice a whole ``put`` here); a node seals when it serves its feeds.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar, NamedTuple

import cbor2

from ._chain import AGENTS, agent_index
from ._errors import CodecError
from ._event import Event
from ._fields import ID_SIZE, UINT64_MAX
from ._keys import SIGNATURE_SIZE, is_public_key, node_id_of, verify
from ._registry import Header, register_event_type
from ._statements import Grant, PublicIdentity, Revocation

__all__ = [
    "IDENTITY",
    "MAX_SEAL_POINTS",
    "GrantEvent",
    "IdentityEvent",
    "RevokeEvent",
    "SealEvent",
    "SealPoint",
    "seal_points",
]

#: The agent whose log holds identities, grants, revocations and seals.
IDENTITY = "identity"
#: Most points one seal may name.
MAX_SEAL_POINTS = 4096

_SEAL = "koru-delta/seal/1"


def _in_identity_log(header: Header, tag: str) -> None:
    if header[1] != IDENTITY:
        raise CodecError(f"a {tag} event belongs to the {IDENTITY!r} log, not {header[1]!r}")


class _Identity(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    identity: PublicIdentity


class IdentityEvent(_Identity, Event):
    """An identity registered in the database: its public key and proof of work."""

    __slots__ = ()
    TAG: ClassVar[str] = "identity"


class _Grant(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    grant: Grant


class GrantEvent(_Grant, Event):
    """A signed capability grant, stored."""

    __slots__ = ()
    TAG: ClassVar[str] = "grant"


class _Revoke(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    revocation: Revocation


class RevokeEvent(_Revoke, Event):
    """A signed revocation of a grant, stored: it cannot be undone."""

    __slots__ = ()
    TAG: ClassVar[str] = "revoke"


class SealPoint(NamedTuple):
    """Event ``seq`` of the sealing node's feed for ``agent`` has id ``event_id``."""

    agent: str
    seq: int
    event_id: bytes


class _Seal(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    public_key: bytes
    points: tuple[SealPoint, ...]
    signature: bytes


class SealEvent(_Seal, Event):
    """A node's signature over points of its own feeds (see the module doc)."""

    __slots__ = ()
    TAG: ClassVar[str] = "seal"

    def message(self) -> bytes:
        """The bytes the node signed: its header, its key and its points."""
        return cbor2.dumps([_SEAL, *self[:6], [list(p) for p in self.points]])

    def verified(self) -> bool:
        """True if the key derives the origin and signed exactly this seal."""
        return node_id_of(self.public_key) == self.origin and verify(
            self.public_key, self.message(), self.signature
        )


def _decode_identity(header: Header, body: Any) -> Event:
    _in_identity_log(header, "identity")
    return IdentityEvent(*header, PublicIdentity.decode(body))


def _decode_grant(header: Header, body: Any) -> Event:
    _in_identity_log(header, "grant")
    return GrantEvent(*header, Grant.decode(body))


def _decode_revoke(header: Header, body: Any) -> Event:
    _in_identity_log(header, "revoke")
    return RevokeEvent(*header, Revocation.decode(body))


def _point(item: Any) -> SealPoint:
    if type(item) is not list or len(item) != 3:
        raise CodecError("a seal point must be [agent, seq, event id]")
    agent, seq, eid = item
    if type(agent) is not str or agent not in AGENTS:
        raise CodecError(f"a seal point names an unknown agent {agent!r}")
    if type(seq) is not int or not 1 <= seq <= UINT64_MAX:
        raise CodecError("a seal point's seq must be a positive 64-bit integer")
    if type(eid) is not bytes or len(eid) != ID_SIZE:
        raise CodecError(f"a seal point's event id must be {ID_SIZE} bytes")
    return SealPoint(agent, seq, eid)


def seal_points(items: Any) -> tuple[SealPoint, ...]:
    """Seal points from plain lists, checked: known agents, strictly increasing
    (agent, seq) so that one seal has one encoding, at most ``MAX_SEAL_POINTS``."""
    if type(items) is not list or not 0 < len(items) <= MAX_SEAL_POINTS:
        raise CodecError(f"a seal names 1 to {MAX_SEAL_POINTS} points")
    points = tuple(_point(item) for item in items)
    order = [(agent_index(p.agent), p.seq) for p in points]
    if any(a >= b for a, b in pairwise(order)):
        raise CodecError("seal points must be in increasing (agent, seq) order")
    return points


def _decode_seal(header: Header, body: Any) -> Event:
    _in_identity_log(header, "seal")
    if type(body) is not list or len(body) < 3:
        raise CodecError("seal body must be [public key, signature, point, ...]")
    key, signature, items = body[0], body[1], body[2:]
    if not is_public_key(key):
        raise CodecError("a seal's public key must be 32 bytes")
    if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        raise CodecError(f"a seal's signature must be {SIGNATURE_SIZE} bytes")
    seal = SealEvent(*header, key, seal_points(items), signature)
    if node_id_of(key) != seal.origin:
        raise CodecError("a seal's key does not derive its origin: only a node seals its feeds")
    if not verify(key, seal.message(), signature):
        raise CodecError("the seal's signature does not verify")
    return seal


register_event_type(IdentityEvent, lambda e: list(e.identity), _decode_identity)
register_event_type(GrantEvent, lambda e: list(e.grant), _decode_grant)
register_event_type(RevokeEvent, lambda e: list(e.revocation), _decode_revoke)
register_event_type(
    SealEvent,
    lambda e: [e.public_key, e.signature, *(list(p) for p in e.points)],
    _decode_seal,
)
