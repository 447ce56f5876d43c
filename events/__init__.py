"""Events and logs: the event model, its canonical codec, and per-agent logs.

Everything here is synchronous and free of trio: the database layer above decides when
to append, flush and sync.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._lazy import lazy_names as _lazy_names

if _TYPE_CHECKING:
    from ._auth_events import IDENTITY as IDENTITY
    from ._auth_events import MAX_SEAL_POINTS as MAX_SEAL_POINTS
    from ._auth_events import GrantEvent as GrantEvent
    from ._auth_events import IdentityEvent as IdentityEvent
    from ._auth_events import RevokeEvent as RevokeEvent
    from ._auth_events import SealEvent as SealEvent
    from ._auth_events import SealPoint as SealPoint
    from ._auth_events import seal_points as seal_points
    from ._cbor_budget import decodes_within as decodes_within
    from ._chain import AGENTS as AGENTS
    from ._chain import STORAGE as STORAGE
    from ._chain import agent_index as agent_index
    from ._chain import chain as chain
    from ._chain import genesis_root as genesis_root
    from ._codec import SCHEMA_VERSION as SCHEMA_VERSION
    from ._codec import decode_event as decode_event
    from ._codec import decode_trusted as decode_trusted
    from ._codec import encode_event as encode_event
    from ._codec import event_id as event_id
    from ._codec import event_link as event_link
    from ._disk import Disk as Disk
    from ._disk import OsDisk as OsDisk
    from ._errors import AuthError as AuthError
    from ._errors import ChallengeError as ChallengeError
    from ._errors import ChallengeExpiredError as ChallengeExpiredError
    from ._errors import ChallengeReplayedError as ChallengeReplayedError
    from ._errors import CodecError as CodecError
    from ._errors import ConnectionLostError as ConnectionLostError
    from ._errors import CorruptCheckpointError as CorruptCheckpointError
    from ._errors import CorruptLogError as CorruptLogError
    from ._errors import DatabaseClosedError as DatabaseClosedError
    from ._errors import DatabaseLockedError as DatabaseLockedError
    from ._errors import DataLossError as DataLossError
    from ._errors import DimensionMismatchError as DimensionMismatchError
    from ._errors import DurabilityError as DurabilityError
    from ._errors import EmbeddingNotFoundError as EmbeddingNotFoundError
    from ._errors import HandshakeRefusedError as HandshakeRefusedError
    from ._errors import InvalidArgumentError as InvalidArgumentError
    from ._errors import InvalidDataError as InvalidDataError
    from ._errors import InvalidGrantError as InvalidGrantError
    from ._errors import InvalidParentError as InvalidParentError
    from ._errors import InvalidQueryError as InvalidQueryError
    from ._errors import KeyFileError as KeyFileError
    from ._errors import KeyNotFoundError as KeyNotFoundError
    from ._errors import KoruError as KoruError
    from ._errors import LaggedError as LaggedError
    from ._errors import NotFoundError as NotFoundError
    from ._errors import NoValueAtTimeError as NoValueAtTimeError
    from ._errors import PermissionDeniedError as PermissionDeniedError
    from ._errors import ProofOfWorkError as ProofOfWorkError
    from ._errors import ReadOnlyError as ReadOnlyError
    from ._errors import RemoteError as RemoteError
    from ._errors import RemoteFailureError as RemoteFailureError
    from ._errors import SessionError as SessionError
    from ._errors import SessionExpiredError as SessionExpiredError
    from ._errors import SignatureError as SignatureError
    from ._errors import StorageError as StorageError
    from ._errors import VersionNotFoundError as VersionNotFoundError
    from ._errors import WorkspaceDroppedError as WorkspaceDroppedError
    from ._errors import WrongServerError as WrongServerError
    from ._essence import ESSENCE as ESSENCE
    from ._essence import GenomeEvent as GenomeEvent
    from ._event import NODE_ID_SIZE as NODE_ID_SIZE
    from ._event import BatchEvent as BatchEvent
    from ._event import DeleteEvent as DeleteEvent
    from ._event import Event as Event
    from ._event import PutEvent as PutEvent
    from ._event import Write as Write
    from ._event import write_id as write_id
    from ._file_store import DEFAULT_SEGMENT_SIZE as DEFAULT_SEGMENT_SIZE
    from ._file_store import LOST_FOUND as LOST_FOUND
    from ._file_store import FileStore as FileStore
    from ._frame import SEGMENT_HEADER_SIZE as SEGMENT_HEADER_SIZE
    from ._glob import MAX_WILDCARDS as MAX_WILDCARDS
    from ._glob import Glob as Glob
    from ._glob import check_glob as check_glob
    from ._glob import covers as covers
    from ._hlc import HybridLogicalClock as HybridLogicalClock
    from ._keys import NONCE_SIZE as NONCE_SIZE
    from ._keys import PUBLIC_KEY_SIZE as PUBLIC_KEY_SIZE
    from ._keys import SIGNATURE_SIZE as SIGNATURE_SIZE
    from ._keys import is_public_key as is_public_key
    from ._keys import node_id_of as node_id_of
    from ._keys import short_key as short_key
    from ._keys import verify as verify
    from ._keys import work_of as work_of
    from ._lifecycle import LIFECYCLE as LIFECYCLE
    from ._lifecycle import MAX_TIER_KEYS as MAX_TIER_KEYS
    from ._lifecycle import TieringEvent as TieringEvent
    from ._limits import MAX_EVENT_SIZE as MAX_EVENT_SIZE
    from ._limits import MAX_NAME_BYTES as MAX_NAME_BYTES
    from ._limits import MAX_SEGMENT_SIZE as MAX_SEGMENT_SIZE
    from ._limits import MAX_VALUE_DEPTH as MAX_VALUE_DEPTH
    from ._limits import MAX_VALUE_SIZE as MAX_VALUE_SIZE
    from ._limits import MIN_SEGMENT_SIZE as MIN_SEGMENT_SIZE
    from ._lineage import MAX_PARENTS as MAX_PARENTS
    from ._lineage import LinkedPutEvent as LinkedPutEvent
    from ._lineage import parents_problem as parents_problem
    from ._lineage import space_of as space_of
    from ._memory_store import MemoryStore as MemoryStore
    from ._names import RESERVED as RESERVED
    from ._names import check_name as check_name
    from ._names import check_user_name as check_user_name
    from ._names import name_problem as name_problem
    from ._names import user_name_problem as user_name_problem
    from ._put_codec import PutEncoder as PutEncoder
    from ._put_value import put_value as put_value
    from ._query_events import INDEX_ACTIONS as INDEX_ACTIONS
    from ._query_events import IndexEvent as IndexEvent
    from ._query_events import ViewEvent as ViewEvent
    from ._registry import EventType as EventType
    from ._registry import Header as Header
    from ._registry import event_type_of as event_type_of
    from ._registry import event_types as event_types
    from ._registry import register_event_type as register_event_type
    from ._runs import RUN_SIZE as RUN_SIZE
    from ._runs import PutRun as PutRun
    from ._runs import RunDecoder as RunDecoder
    from ._sleep import SLEEP as SLEEP
    from ._sleep import ConsolidationEvent as ConsolidationEvent
    from ._statements import ACTIONS as ACTIONS
    from ._statements import ADMIN as ADMIN
    from ._statements import READ as READ
    from ._statements import WRITE as WRITE
    from ._statements import Grant as Grant
    from ._statements import PublicIdentity as PublicIdentity
    from ._statements import Revocation as Revocation
    from ._statements import Signer as Signer
    from ._statements import action_names as action_names
    from ._statements import actions_of as actions_of
    from ._store import Cursor as Cursor
    from ._store import LogStore as LogStore
    from ._store import Offload as Offload
    from ._store import Record as Record
    from ._store import call_here as call_here
    from ._store import pack_location as pack_location
    from ._store import unpack_location as unpack_location
    from ._table import KeyProbe as KeyProbe
    from ._table import Table as Table
    from ._table import TableEncoder as TableEncoder
    from ._table import encode_table as encode_table
    from ._table import key_probe as key_probe
    from ._table import table_name as table_name
    from ._tags import BUILTIN_TAGS as BUILTIN_TAGS
    from ._tags import TagRefused as TagRefused
    from ._tags import refuse_tags as refuse_tags
    from ._ttl import ExpireEvent as ExpireEvent
    from ._ttl import ExpiringBatchEvent as ExpiringBatchEvent
    from ._ttl import ExpiringPutEvent as ExpiringPutEvent
    from ._values import DEFAULT_MAX_VALUE_SIZE as DEFAULT_MAX_VALUE_SIZE
    from ._values import cbor_head as cbor_head
    from ._values import content_id as content_id
    from ._values import decode_value as decode_value
    from ._values import decode_value_strict as decode_value_strict
    from ._values import encode_value as encode_value
    from ._vector_events import FLAT_LISTS as FLAT_LISTS
    from ._vector_events import MAX_INDEX_DIM as MAX_INDEX_DIM
    from ._vector_events import MAX_VECTOR_DIM as MAX_VECTOR_DIM
    from ._vector_events import VECTOR as VECTOR
    from ._vector_events import EmbedEvent as EmbedEvent
    from ._vector_events import UnembedEvent as UnembedEvent
    from ._vector_events import VectorIndexEvent as VectorIndexEvent
    from ._vector_events import vector_problem as vector_problem
    from ._verify import Problem as Problem
    from ._verify import SegmentSummary as SegmentSummary
    from ._verify import verify_logs as verify_logs
    from ._warn import warn as warn
    from ._workspaces import MAX_WORKSPACE_BYTES as MAX_WORKSPACE_BYTES
    from ._workspaces import WORKSPACE as WORKSPACE
    from ._workspaces import WORKSPACE_ACTIONS as WORKSPACE_ACTIONS
    from ._workspaces import WORKSPACE_PREFIX as WORKSPACE_PREFIX
    from ._workspaces import WorkspaceEvent as WorkspaceEvent
    from ._workspaces import check_workspace as check_workspace
    from ._workspaces import split_workspace as split_workspace
    from ._workspaces import workspace_prefix as workspace_prefix
    from ._workspaces import workspace_problem as workspace_problem

# Each name is imported from its module when first asked for (``from koru.events
# import X`` included): a one-shot ``kdelta get`` then imports the modules it uses, not
# all of them (the event types of auth, vectors, queries...).
_LAZY: dict[str, str] = {
    "IDENTITY": "._auth_events",
    "MAX_SEAL_POINTS": "._auth_events",
    "GrantEvent": "._auth_events",
    "IdentityEvent": "._auth_events",
    "RevokeEvent": "._auth_events",
    "SealEvent": "._auth_events",
    "SealPoint": "._auth_events",
    "seal_points": "._auth_events",
    "decodes_within": "._cbor_budget",
    "AGENTS": "._chain",
    "STORAGE": "._chain",
    "agent_index": "._chain",
    "chain": "._chain",
    "genesis_root": "._chain",
    "SCHEMA_VERSION": "._codec",
    "decode_event": "._codec",
    "decode_trusted": "._codec",
    "encode_event": "._codec",
    "event_id": "._codec",
    "event_link": "._codec",
    "Disk": "._disk",
    "OsDisk": "._disk",
    "AuthError": "._errors",
    "ChallengeError": "._errors",
    "ChallengeExpiredError": "._errors",
    "ChallengeReplayedError": "._errors",
    "CodecError": "._errors",
    "ConnectionLostError": "._errors",
    "CorruptCheckpointError": "._errors",
    "CorruptLogError": "._errors",
    "DatabaseClosedError": "._errors",
    "DatabaseLockedError": "._errors",
    "DataLossError": "._errors",
    "DimensionMismatchError": "._errors",
    "DurabilityError": "._errors",
    "EmbeddingNotFoundError": "._errors",
    "HandshakeRefusedError": "._errors",
    "InvalidArgumentError": "._errors",
    "InvalidDataError": "._errors",
    "InvalidGrantError": "._errors",
    "InvalidParentError": "._errors",
    "InvalidQueryError": "._errors",
    "KeyFileError": "._errors",
    "KeyNotFoundError": "._errors",
    "KoruError": "._errors",
    "LaggedError": "._errors",
    "NotFoundError": "._errors",
    "NoValueAtTimeError": "._errors",
    "PermissionDeniedError": "._errors",
    "ProofOfWorkError": "._errors",
    "ReadOnlyError": "._errors",
    "RemoteError": "._errors",
    "RemoteFailureError": "._errors",
    "SessionError": "._errors",
    "SessionExpiredError": "._errors",
    "SignatureError": "._errors",
    "StorageError": "._errors",
    "VersionNotFoundError": "._errors",
    "WorkspaceDroppedError": "._errors",
    "WrongServerError": "._errors",
    "ESSENCE": "._essence",
    "GenomeEvent": "._essence",
    "NODE_ID_SIZE": "._event",
    "BatchEvent": "._event",
    "DeleteEvent": "._event",
    "Event": "._event",
    "PutEvent": "._event",
    "Write": "._event",
    "write_id": "._event",
    "DEFAULT_SEGMENT_SIZE": "._file_store",
    "LOST_FOUND": "._file_store",
    "FileStore": "._file_store",
    "SEGMENT_HEADER_SIZE": "._frame",
    "MAX_WILDCARDS": "._glob",
    "Glob": "._glob",
    "check_glob": "._glob",
    "covers": "._glob",
    "HybridLogicalClock": "._hlc",
    "NONCE_SIZE": "._keys",
    "PUBLIC_KEY_SIZE": "._keys",
    "SIGNATURE_SIZE": "._keys",
    "is_public_key": "._keys",
    "node_id_of": "._keys",
    "short_key": "._keys",
    "verify": "._keys",
    "work_of": "._keys",
    "LIFECYCLE": "._lifecycle",
    "MAX_TIER_KEYS": "._lifecycle",
    "TieringEvent": "._lifecycle",
    "MAX_EVENT_SIZE": "._limits",
    "MAX_NAME_BYTES": "._limits",
    "MAX_SEGMENT_SIZE": "._limits",
    "MAX_VALUE_DEPTH": "._limits",
    "MAX_VALUE_SIZE": "._limits",
    "MIN_SEGMENT_SIZE": "._limits",
    "MAX_PARENTS": "._lineage",
    "LinkedPutEvent": "._lineage",
    "parents_problem": "._lineage",
    "space_of": "._lineage",
    "MemoryStore": "._memory_store",
    "RESERVED": "._names",
    "check_name": "._names",
    "check_user_name": "._names",
    "name_problem": "._names",
    "user_name_problem": "._names",
    "PutEncoder": "._put_codec",
    "put_value": "._put_value",
    "INDEX_ACTIONS": "._query_events",
    "IndexEvent": "._query_events",
    "ViewEvent": "._query_events",
    "EventType": "._registry",
    "Header": "._registry",
    "event_type_of": "._registry",
    "event_types": "._registry",
    "register_event_type": "._registry",
    "RUN_SIZE": "._runs",
    "PutRun": "._runs",
    "RunDecoder": "._runs",
    "SLEEP": "._sleep",
    "ConsolidationEvent": "._sleep",
    "ACTIONS": "._statements",
    "ADMIN": "._statements",
    "READ": "._statements",
    "WRITE": "._statements",
    "Grant": "._statements",
    "PublicIdentity": "._statements",
    "Revocation": "._statements",
    "Signer": "._statements",
    "action_names": "._statements",
    "actions_of": "._statements",
    "Cursor": "._store",
    "LogStore": "._store",
    "Offload": "._store",
    "Record": "._store",
    "call_here": "._store",
    "pack_location": "._store",
    "unpack_location": "._store",
    "KeyProbe": "._table",
    "Table": "._table",
    "TableEncoder": "._table",
    "encode_table": "._table",
    "key_probe": "._table",
    "table_name": "._table",
    "BUILTIN_TAGS": "._tags",
    "TagRefused": "._tags",
    "refuse_tags": "._tags",
    "ExpireEvent": "._ttl",
    "ExpiringBatchEvent": "._ttl",
    "ExpiringPutEvent": "._ttl",
    "DEFAULT_MAX_VALUE_SIZE": "._values",
    "cbor_head": "._values",
    "content_id": "._values",
    "decode_value": "._values",
    "decode_value_strict": "._values",
    "encode_value": "._values",
    "FLAT_LISTS": "._vector_events",
    "MAX_INDEX_DIM": "._vector_events",
    "MAX_VECTOR_DIM": "._vector_events",
    "VECTOR": "._vector_events",
    "EmbedEvent": "._vector_events",
    "UnembedEvent": "._vector_events",
    "VectorIndexEvent": "._vector_events",
    "vector_problem": "._vector_events",
    "Problem": "._verify",
    "SegmentSummary": "._verify",
    "verify_logs": "._verify",
    "warn": "._warn",
    "MAX_WORKSPACE_BYTES": "._workspaces",
    "WORKSPACE": "._workspaces",
    "WORKSPACE_ACTIONS": "._workspaces",
    "WORKSPACE_PREFIX": "._workspaces",
    "WorkspaceEvent": "._workspaces",
    "check_workspace": "._workspaces",
    "split_workspace": "._workspaces",
    "workspace_prefix": "._workspaces",
    "workspace_problem": "._workspaces",
}


__all__ = [
    "FLAT_LISTS",
    "RemoteFailureError",
    "RemoteError",
    "HandshakeRefusedError",
    "ConnectionLostError",
    "BUILTIN_TAGS",
    "TagRefused",
    "refuse_tags",
    "decodes_within",
    "InvalidParentError",
    "WorkspaceDroppedError",
    "MAX_PARENTS",
    "LinkedPutEvent",
    "parents_problem",
    "space_of",
    "RESERVED",
    "check_user_name",
    "user_name_problem",
    "MAX_WORKSPACE_BYTES",
    "WORKSPACE",
    "WORKSPACE_ACTIONS",
    "WORKSPACE_PREFIX",
    "WorkspaceEvent",
    "check_workspace",
    "split_workspace",
    "workspace_prefix",
    "workspace_problem",
    "AGENTS",
    "Problem",
    "SegmentSummary",
    "verify_logs",
    "warn",
    "MAX_INDEX_DIM",
    "MAX_VECTOR_DIM",
    "VECTOR",
    "EmbedEvent",
    "UnembedEvent",
    "VectorIndexEvent",
    "vector_problem",
    "DEFAULT_MAX_VALUE_SIZE",
    "DEFAULT_SEGMENT_SIZE",
    "SEGMENT_HEADER_SIZE",
    "ESSENCE",
    "LIFECYCLE",
    "MAX_TIER_KEYS",
    "INDEX_ACTIONS",
    "LOST_FOUND",
    "MAX_EVENT_SIZE",
    "MAX_NAME_BYTES",
    "MAX_SEGMENT_SIZE",
    "MAX_VALUE_DEPTH",
    "MAX_VALUE_SIZE",
    "MIN_SEGMENT_SIZE",
    "NODE_ID_SIZE",
    "SCHEMA_VERSION",
    "SLEEP",
    "STORAGE",
    "BatchEvent",
    "CodecError",
    "ConsolidationEvent",
    "CorruptCheckpointError",
    "CorruptLogError",
    "Cursor",
    "DataLossError",
    "DatabaseClosedError",
    "DatabaseLockedError",
    "DeleteEvent",
    "Disk",
    "DimensionMismatchError",
    "DurabilityError",
    "EmbeddingNotFoundError",
    "Event",
    "ExpireEvent",
    "ExpiringBatchEvent",
    "ExpiringPutEvent",
    "GenomeEvent",
    "EventType",
    "Header",
    "FileStore",
    "HybridLogicalClock",
    "IndexEvent",
    "InvalidArgumentError",
    "InvalidDataError",
    "InvalidQueryError",
    "KeyNotFoundError",
    "KoruError",
    "LaggedError",
    "LogStore",
    "Offload",
    "MemoryStore",
    "NoValueAtTimeError",
    "NotFoundError",
    "OsDisk",
    "PutEncoder",
    "put_value",
    "PutEvent",
    "PutRun",
    "RUN_SIZE",
    "RunDecoder",
    "ReadOnlyError",
    "Record",
    "StorageError",
    "Table",
    "TableEncoder",
    "KeyProbe",
    "key_probe",
    "TieringEvent",
    "VersionNotFoundError",
    "ViewEvent",
    "Write",
    "agent_index",
    "call_here",
    "cbor_head",
    "chain",
    "check_name",
    "content_id",
    "decode_event",
    "decode_trusted",
    "decode_value",
    "decode_value_strict",
    "encode_event",
    "encode_table",
    "encode_value",
    "event_id",
    "event_link",
    "event_type_of",
    "event_types",
    "genesis_root",
    "name_problem",
    "pack_location",
    "register_event_type",
    "table_name",
    "unpack_location",
    "write_id",
    # auth: identities, grants, revocations, seals
    "IDENTITY",
    "MAX_SEAL_POINTS",
    "GrantEvent",
    "IdentityEvent",
    "RevokeEvent",
    "SealEvent",
    "SealPoint",
    "seal_points",
    "AuthError",
    "ChallengeError",
    "ChallengeExpiredError",
    "ChallengeReplayedError",
    "InvalidGrantError",
    "KeyFileError",
    "PermissionDeniedError",
    "ProofOfWorkError",
    "SessionError",
    "SessionExpiredError",
    "SignatureError",
    "WrongServerError",
    "MAX_WILDCARDS",
    "Glob",
    "check_glob",
    "covers",
    "NONCE_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "is_public_key",
    "node_id_of",
    "short_key",
    "verify",
    "work_of",
    "ACTIONS",
    "ADMIN",
    "READ",
    "WRITE",
    "Grant",
    "PublicIdentity",
    "Revocation",
    "Signer",
    "action_names",
    "actions_of",
]

__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals(), __all__)
