"""Events and logs: the event model, its canonical codec, and per-agent logs.

Everything here is synchronous and free of trio: the database layer above decides when
to append, flush and sync.
"""

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
from ._workspaces import MAX_WORKSPACE_BYTES as MAX_WORKSPACE_BYTES
from ._workspaces import WORKSPACE as WORKSPACE
from ._workspaces import WORKSPACE_ACTIONS as WORKSPACE_ACTIONS
from ._workspaces import WORKSPACE_PREFIX as WORKSPACE_PREFIX
from ._workspaces import WorkspaceEvent as WorkspaceEvent
from ._workspaces import check_workspace as check_workspace
from ._workspaces import split_workspace as split_workspace
from ._workspaces import workspace_prefix as workspace_prefix
from ._workspaces import workspace_problem as workspace_problem

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
