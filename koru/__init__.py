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

from __future__ import annotations

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# Why lazy: importing ``koru.events`` (or ``koru.projections``) runs this module first,
# and those layers must not pull in trio or the face's modules; a one-shot command
# that only reads a log pays for nothing else. Each public name is imported on first
# use (PEP 562); type checkers see the imports below.
_EXPORTS: dict[str, str] = {
    "SpaceAPI": "koru._api",
    "Workspace": "koru._workspace",
    "WorkspaceInfo": "koru._workspace",
    "workspace_namespace": "koru._space",
    "Connected": "koru._lineage",
    "InvalidParentError": "koru.events",
    "WorkspaceDroppedError": "koru.events",
    "MAX_PARENTS": "koru.events",
    # auth: identities, sessions, capabilities
    "AuthError": "koru.events",
    "SignatureError": "koru.events",
    "ProofOfWorkError": "koru.events",
    "KeyFileError": "koru.events",
    "ChallengeError": "koru.events",
    "ChallengeExpiredError": "koru.events",
    "ChallengeReplayedError": "koru.events",
    "WrongServerError": "koru.events",
    "SessionError": "koru.events",
    "SessionExpiredError": "koru.events",
    "PermissionDeniedError": "koru.events",
    "InvalidGrantError": "koru.events",
    "Grant": "koru.events",
    "Revocation": "koru.events",
    "PublicIdentity": "koru.events",
    "Identity": "koru._identity",
    "DEFAULT_DIFFICULTY": "koru._identity",
    "Challenge": "koru._sessions",
    "Response": "koru._sessions",
    "Session": "koru._sessions",
    "AuthorizedDatabase": "koru._authorized",
    "Change": "koru._diff",
    "KeyChange": "koru._subscriptions",
    "LaggedError": "koru.events",
    "Subscription": "koru._subscriptions",
    "Clock": "koru.nursery",
    "CodecError": "koru.events",
    "RemoteFailureError": "koru.events",
    "RemoteError": "koru.events",
    "HandshakeRefusedError": "koru.events",
    "ConnectionLostError": "koru.events",
    "CorruptCheckpointError": "koru.events",
    "CorruptLogError": "koru.events",
    "DEFAULT_CACHE_BYTES": "koru._cache",
    "DEFAULT_SYNC": "koru._open",
    "DataLossError": "koru.events",
    "DimensionMismatchError": "koru.events",
    "Embedder": "koru._embedders",
    "EmbeddingNotFoundError": "koru.events",
    "HashingEmbedder": "koru._embedders",
    "SentenceEmbedder": "koru._sentence",
    "VectorHit": "koru._vectors",
    "Database": "koru._database",
    "connect": "koru._remote",
    "RemoteSpace": "koru._remote",
    "RemoteDatabase": "koru._remote",
    "DatabaseAPI": "koru._api",
    "DatabaseClosedError": "koru.events",
    "DatabaseLockedError": "koru.events",
    "Diff": "koru._diff",
    "Expiring": "koru._types",
    "Genome": "koru._genome",
    "GenomeCheck": "koru._genome",
    "ProcessInfo": "koru.nursery",
    "DurabilityError": "koru.events",
    "F": "koru.projections",
    "Filter": "koru.projections",
    "Group": "koru.projections",
    "InvalidArgumentError": "koru.events",
    "InvalidDataError": "koru.events",
    "InvalidQueryError": "koru.events",
    "KeyNotFoundError": "koru.events",
    "KoruError": "koru.events",
    "MAX_NAME_BYTES": "koru.events",
    "MEMORY": "koru._open",
    "NoValueAtTimeError": "koru.events",
    "NotFoundError": "koru.events",
    "Query": "koru.projections",
    "ReadOnlyError": "koru.events",
    "Stats": "koru._types",
    "Tiers": "koru._types",
    "IngestResult": "koru._types",
    "IndexInfo": "koru._indexing",
    "ViewInfo": "koru._viewing",
    "QueryPlan": "koru.projections",
    "Refused": "koru._types",
    "ReplayResult": "koru._replay",
    "Row": "koru.projections",
    "StorageError": "koru.events",
    "SystemClock": "koru.nursery",
    "TrioClock": "koru.nursery",
    "Version": "koru._types",
    "VersionNotFoundError": "koru.events",
    "Versioned": "koru._types",
    "default_path": "koru._open",
    "open": "koru._open",
    "replay": "koru._replay",
    "verify_genome": "koru._genome",
}

if _typing.TYPE_CHECKING:
    from ._api import DatabaseAPI as DatabaseAPI
    from ._api import SpaceAPI as SpaceAPI
    from ._authorized import AuthorizedDatabase as AuthorizedDatabase
    from ._cache import DEFAULT_CACHE_BYTES as DEFAULT_CACHE_BYTES
    from ._database import Database as Database
    from ._diff import Change as Change
    from ._diff import Diff as Diff
    from ._embedders import Embedder as Embedder
    from ._embedders import HashingEmbedder as HashingEmbedder
    from ._genome import Genome as Genome
    from ._genome import GenomeCheck as GenomeCheck
    from ._genome import verify_genome as verify_genome
    from ._identity import DEFAULT_DIFFICULTY as DEFAULT_DIFFICULTY
    from ._identity import Identity as Identity
    from ._indexing import IndexInfo as IndexInfo
    from ._lineage import Connected as Connected
    from ._open import DEFAULT_SYNC as DEFAULT_SYNC
    from ._open import MEMORY as MEMORY
    from ._open import default_path as default_path
    from ._open import open as open
    from ._remote import RemoteDatabase as RemoteDatabase
    from ._remote import RemoteSpace as RemoteSpace
    from ._remote import connect as connect
    from ._replay import ReplayResult as ReplayResult
    from ._replay import replay as replay
    from ._sentence import SentenceEmbedder as SentenceEmbedder
    from ._sessions import Challenge as Challenge
    from ._sessions import Response as Response
    from ._sessions import Session as Session
    from ._space import workspace_namespace as workspace_namespace
    from ._subscriptions import KeyChange as KeyChange
    from ._subscriptions import Subscription as Subscription
    from ._types import Expiring as Expiring
    from ._types import IngestResult as IngestResult
    from ._types import Refused as Refused
    from ._types import Stats as Stats
    from ._types import Tiers as Tiers
    from ._types import Version as Version
    from ._types import Versioned as Versioned
    from ._vectors import VectorHit as VectorHit
    from ._viewing import ViewInfo as ViewInfo
    from ._workspace import Workspace as Workspace
    from ._workspace import WorkspaceInfo as WorkspaceInfo
    from .events import MAX_NAME_BYTES as MAX_NAME_BYTES
    from .events import MAX_PARENTS as MAX_PARENTS
    from .events import AuthError as AuthError
    from .events import ChallengeError as ChallengeError
    from .events import ChallengeExpiredError as ChallengeExpiredError
    from .events import ChallengeReplayedError as ChallengeReplayedError
    from .events import CodecError as CodecError
    from .events import ConnectionLostError as ConnectionLostError
    from .events import CorruptCheckpointError as CorruptCheckpointError
    from .events import CorruptLogError as CorruptLogError
    from .events import DatabaseClosedError as DatabaseClosedError
    from .events import DatabaseLockedError as DatabaseLockedError
    from .events import DataLossError as DataLossError
    from .events import DimensionMismatchError as DimensionMismatchError
    from .events import DurabilityError as DurabilityError
    from .events import EmbeddingNotFoundError as EmbeddingNotFoundError
    from .events import Grant as Grant
    from .events import HandshakeRefusedError as HandshakeRefusedError
    from .events import InvalidArgumentError as InvalidArgumentError
    from .events import InvalidDataError as InvalidDataError
    from .events import InvalidGrantError as InvalidGrantError
    from .events import InvalidParentError as InvalidParentError
    from .events import InvalidQueryError as InvalidQueryError
    from .events import KeyFileError as KeyFileError
    from .events import KeyNotFoundError as KeyNotFoundError
    from .events import KoruError as KoruError
    from .events import LaggedError as LaggedError
    from .events import NotFoundError as NotFoundError
    from .events import NoValueAtTimeError as NoValueAtTimeError
    from .events import PermissionDeniedError as PermissionDeniedError
    from .events import ProofOfWorkError as ProofOfWorkError
    from .events import PublicIdentity as PublicIdentity
    from .events import ReadOnlyError as ReadOnlyError
    from .events import RemoteError as RemoteError
    from .events import RemoteFailureError as RemoteFailureError
    from .events import Revocation as Revocation
    from .events import SessionError as SessionError
    from .events import SessionExpiredError as SessionExpiredError
    from .events import SignatureError as SignatureError
    from .events import StorageError as StorageError
    from .events import VersionNotFoundError as VersionNotFoundError
    from .events import WorkspaceDroppedError as WorkspaceDroppedError
    from .events import WrongServerError as WrongServerError
    from .nursery import Clock as Clock
    from .nursery import ProcessInfo as ProcessInfo
    from .nursery import SystemClock as SystemClock
    from .nursery import TrioClock as TrioClock
    from .projections import F as F
    from .projections import Filter as Filter
    from .projections import Group as Group
    from .projections import Query as Query
    from .projections import QueryPlan as QueryPlan
    from .projections import Row as Row

__all__ = [
    "SpaceAPI",
    "Workspace",
    "WorkspaceInfo",
    "workspace_namespace",
    "Connected",
    "InvalidParentError",
    "WorkspaceDroppedError",
    "MAX_PARENTS",
    "AuthError",
    "SignatureError",
    "ProofOfWorkError",
    "KeyFileError",
    "ChallengeError",
    "ChallengeExpiredError",
    "ChallengeReplayedError",
    "WrongServerError",
    "SessionError",
    "SessionExpiredError",
    "PermissionDeniedError",
    "InvalidGrantError",
    "Grant",
    "Revocation",
    "PublicIdentity",
    "Identity",
    "DEFAULT_DIFFICULTY",
    "Challenge",
    "Response",
    "Session",
    "AuthorizedDatabase",
    "Change",
    "Clock",
    "CodecError",
    "RemoteFailureError",
    "RemoteError",
    "HandshakeRefusedError",
    "ConnectionLostError",
    "CorruptCheckpointError",
    "CorruptLogError",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_SYNC",
    "DataLossError",
    "DimensionMismatchError",
    "Embedder",
    "EmbeddingNotFoundError",
    "HashingEmbedder",
    "SentenceEmbedder",
    "VectorHit",
    "Database",
    "connect",
    "RemoteSpace",
    "RemoteDatabase",
    "DatabaseAPI",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "Diff",
    "Expiring",
    "Genome",
    "GenomeCheck",
    "DurabilityError",
    "F",
    "Filter",
    "Group",
    "InvalidArgumentError",
    "InvalidDataError",
    "InvalidQueryError",
    "KeyChange",
    "KeyNotFoundError",
    "KoruError",
    "LaggedError",
    "MAX_NAME_BYTES",
    "MEMORY",
    "NoValueAtTimeError",
    "NotFoundError",
    "ProcessInfo",
    "Query",
    "ReadOnlyError",
    "IngestResult",
    "IndexInfo",
    "QueryPlan",
    "Refused",
    "ReplayResult",
    "Row",
    "Stats",
    "StorageError",
    "Subscription",
    "SystemClock",
    "Tiers",
    "TrioClock",
    "Version",
    "VersionNotFoundError",
    "Versioned",
    "ViewInfo",
    "default_path",
    "open",
    "replay",
    "verify_genome",
]


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'koru' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
