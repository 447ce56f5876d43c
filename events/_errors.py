"""The one exception tree of koru-delta.

Every error the library raises on purpose derives from :class:`KoruError`, typed by
cause, so callers can catch broadly (``except koru.KoruError``) or precisely
(``except koru.KeyNotFoundError``). Where a builtin category fits, the class also
derives from it (``InvalidDataError`` is a ``ValueError``, the not-found family are
``LookupError``), so generic handlers keep working.

The tree lives in the bottom layer so that ``koru.events`` and ``koru.projections``
raise it without importing the public face; ``koru`` re-exports every name.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "ChallengeError",
    "ChallengeExpiredError",
    "ChallengeReplayedError",
    "CodecError",
    "ConnectionLostError",
    "CorruptCheckpointError",
    "CorruptLogError",
    "DataLossError",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "DimensionMismatchError",
    "DurabilityError",
    "EmbeddingNotFoundError",
    "HandshakeRefusedError",
    "InvalidArgumentError",
    "InvalidDataError",
    "InvalidQueryError",
    "InvalidGrantError",
    "KeyFileError",
    "KeyNotFoundError",
    "KoruError",
    "LaggedError",
    "NoValueAtTimeError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProofOfWorkError",
    "ReadOnlyError",
    "RemoteError",
    "RemoteFailureError",
    "SessionError",
    "SessionExpiredError",
    "SignatureError",
    "StorageError",
    "VersionNotFoundError",
    "WrongServerError",
]


class KoruError(Exception):
    """Root of every error raised by koru-delta."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its message and attributes, rebuilt without calling ``__init__``:
        # the default pickles ``args`` (the message) and calls ``__init__`` with them,
        # which the errors that take their parts (a namespace and a key, say) refuse,
        # so an error raised in a worker process (multiprocessing) could not be sent
        # back and the pool hung.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[KoruError], args: tuple[Any, ...], state: dict[str, Any]) -> KoruError:
    error = cls.__new__(cls, *args)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class NotFoundError(KoruError, LookupError):
    """Something that was asked for does not exist."""


class KeyNotFoundError(NotFoundError):
    """The key has no current value (never written, or deleted)."""

    def __init__(self, namespace: str, key: str) -> None:
        super().__init__(f"no value for {namespace!r}/{key!r}")
        self.namespace = namespace
        self.key = key


class NoValueAtTimeError(NotFoundError):
    """The key had no value at the requested time (not yet written, or deleted then)."""

    def __init__(self, namespace: str, key: str, at_ns: int) -> None:
        super().__init__(f"no value for {namespace!r}/{key!r} at {at_ns} ns")
        self.namespace = namespace
        self.key = key
        self.at_ns = at_ns


class VersionNotFoundError(NotFoundError):
    """A version named by write id or history index does not exist for that key."""


class WorkspaceDroppedError(NotFoundError):
    """The workspace was dropped: its handle neither reads nor writes (its history is
    kept and read through ``Database.audit_workspace``), and the name is never used
    again."""

    def __init__(self, workspace: str) -> None:
        super().__init__(f"workspace {workspace!r} was dropped")
        self.workspace = workspace


class EmbeddingNotFoundError(NotFoundError):
    """The key has no current embedding (never embedded, or deleted)."""

    def __init__(self, namespace: str, key: str) -> None:
        super().__init__(f"no embedding for {namespace!r}/{key!r}")
        self.namespace = namespace
        self.key = key


class InvalidDataError(KoruError, ValueError):
    """Input rejected before anything was written: bad namespace, key, value or event."""


class DimensionMismatchError(InvalidDataError):
    """A vector (or a query) whose dimension is not its model's: every embedding of one
    model has the dimension of the model's first."""


class InvalidParentError(InvalidDataError):
    """A put's ``parents`` cannot be recorded (nothing is written): a parent without a
    current value, the key itself, a parent in another space, one listed twice, or too
    many. ``parent`` is the (namespace, key) at fault, or None for the list as a whole."""

    def __init__(self, parent: tuple[str, str] | None, reason: str) -> None:
        super().__init__(f"bad parent {parent!r}: {reason}" if parent else f"bad parents: {reason}")
        self.parent = parent
        self.reason = reason


class InvalidArgumentError(InvalidDataError, TypeError):
    """An argument of a call (an option of ``koru.open``, a parameter of a method) has
    the wrong type or is out of range; the message names the argument."""


class InvalidQueryError(InvalidArgumentError):
    """A query (its Python form or its data form) that cannot be answered: an unknown
    operator, a path that is not a dotted string, an invalid or unsafe regular
    expression, an aggregation over values it cannot combine. ``field`` names where in
    the query (``"where[1].path"``, ``"aggregate"``) or which document field; ``reason``
    says why. Raised before any work, or, for a value only the data reveals (a sum
    meeting a string), instead of an answer: a query never returns a wrong one."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"bad query: {field}: {reason}")
        self.field = field
        self.reason = reason


class CodecError(KoruError, ValueError):
    """Bytes that are not the canonical CBOR encoding of a known event or value."""


class StorageError(KoruError):
    """The storage layer failed or found something wrong on disk."""


class CorruptLogError(StorageError):
    """A log record failed its checksum, framing, hash-chain or content check.

    Corruption is reported, never served and never silently dropped: the agent, the
    record's position in that agent's local log, the byte offset in its segment file
    and the file's path say where.
    """

    def __init__(self, agent: str, position: int, offset: int, reason: str, path: str = "") -> None:
        where = f" in {path}" if path else ""
        super().__init__(
            f"corrupt log for agent {agent!r}: record {position} at byte {offset}{where}: {reason}"
        )
        self.agent = agent
        self.position = position
        self.offset = offset
        self.reason = reason
        self.path = path


class DataLossError(CorruptLogError):
    """The log holds less than was proven durable: records a checkpoint names, or a
    segment the manifest lists, are missing or cut short.

    ``position`` is the first record that is missing. The database refuses to open
    rather than continue with a shorter history (and never overwrites the checkpoint
    that proves the loss).
    """


class CorruptCheckpointError(StorageError):
    """A checkpoint failed validation; callers fall back to replaying the log."""


class DatabaseLockedError(StorageError):
    """Another process holds the database open for writing."""


class DurabilityError(StorageError):
    """Writing or syncing the log failed; the handle is unusable from then on.

    A failed fsync is never retried and then acknowledged: after it, the kernel may have
    dropped the dirty pages, so the only honest answer is to stop.
    """


class LaggedError(KoruError):
    """A subscriber fell behind by more than its buffer and was cut off, so that it
    never slows writers. Every change before ``position`` was delivered; subscribe
    again with ``from_position=position`` to continue with no gap and no duplicate."""

    def __init__(self, position: int) -> None:
        super().__init__(
            f"the subscriber fell behind its buffer; resume with from_position={position}"
        )
        self.position = position


class ReadOnlyError(KoruError):
    """A write was attempted on a database opened read-only."""


class DatabaseClosedError(KoruError):
    """The database handle is closed (or was closed by a fatal storage error)."""


# -- auth: identities, sessions, capabilities ------------------------------------------


class AuthError(KoruError):
    """Root of the auth branch: who someone is, whether they proved it, and what they
    may do. Messages name public keys (shortened), never secret material."""


class SignatureError(AuthError):
    """A signature does not verify: forged, made with another key, or over other bytes."""


class ProofOfWorkError(AuthError, InvalidDataError):
    """An identity's proof of work is below the required difficulty (or was mined for
    another public key): refused with one hash, before any signature is checked."""


class KeyFileError(AuthError):
    """A key file was refused: readable or writable by others, not a regular file (a
    symlink, say), owned by another user, or not a koru-delta key file."""


class ChallengeError(AuthError):
    """A challenge-response failed: see the subclasses for why."""


class ChallengeExpiredError(ChallengeError):
    """The response came after its challenge's time to live."""


class ChallengeReplayedError(ChallengeError):
    """The response names a challenge this server never issued or already used: each
    challenge opens at most one session."""


class WrongServerError(ChallengeError):
    """The response was made for a challenge of another server (another identity)."""


class SessionError(AuthError):
    """A session is unknown to this database (forged, or from another database), or
    closed."""


class SessionExpiredError(SessionError):
    """The session's time to live is over: authenticate again."""


class PermissionDeniedError(AuthError, PermissionError):
    """The identity holds no valid capability for the action on that key."""

    def __init__(
        self, who: str, action: str, namespace: str, key: str, workspace: str | None = None
    ) -> None:
        where = "" if workspace is None else f" in workspace {workspace!r}"
        super().__init__(f"{who} may not {action} {namespace!r}/{key!r}{where}")
        self.who = who
        self.action = action
        self.namespace = namespace
        self.key = key
        #: The workspace the namespace is in (None: the default space).
        self.workspace = workspace


class InvalidGrantError(AuthError, InvalidDataError):
    """A grant or revocation that could not take effect was refused before it was
    written: unsigned by its granter, escalating beyond its parent, deeper than the
    chain limit, from a granter with no authority, for an unregistered grantee, or a
    revocation by someone who may not revoke that grant."""


# -- remote databases ------------------------------------------------------------------


class RemoteError(KoruError):
    """Root of the remote branch: a call to a database served by another node could
    not be made or answered (refusals of the call itself keep their own types:
    ``KeyNotFoundError``, ``PermissionDeniedError``... as a local call raises them).
    ``code`` and ``reason`` are the connection's close code and reason, if any."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class ConnectionLostError(RemoteError):
    """The connection to the server was lost and could not be restored within the
    client's retries. A write in flight may or may not have been applied (the server
    applies a retried write once, unless it restarted in between)."""


class HandshakeRefusedError(RemoteError, AuthError):
    """The server refused this client in the handshake (unknown identity, too little
    proof of work, a server other than the one pinned...), or the server failed to
    prove its own identity to the client."""


class RemoteFailureError(RemoteError):
    """The server failed while answering a call (a defect there, not a refusal)."""
