"""Projections: pure folds from events to state.

No I/O, no clock, no trio: the same events in, the same state out, whatever order
peers delivered them in.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from koru.events._lazy import lazy_names as _lazy_names

if _TYPE_CHECKING:
    from ._auth import AuthState as AuthState
    from ._capabilities import MAX_DEPTH as MAX_DEPTH
    from ._capabilities import MAX_STEPS as MAX_STEPS
    from ._capabilities import NEVER as NEVER
    from ._capabilities import Effective as Effective
    from ._capabilities import Evaluator as Evaluator
    from ._capabilities import Scope as Scope
    from ._capabilities import escalation as escalation
    from ._capabilities import expand as expand
    from ._checkpoint import CHECKPOINT_FILE as CHECKPOINT_FILE
    from ._checkpoint import Checkpoint as Checkpoint
    from ._checkpoint import WriteTable as WriteTable
    from ._checkpoint import capture_checkpoint as capture_checkpoint
    from ._checkpoint import decode_checkpoint as decode_checkpoint
    from ._checkpoint import encode_captured as encode_captured
    from ._checkpoint import open_tables as open_tables
    from ._checkpoint import table_names as table_names
    from ._digest import state_digest as state_digest
    from ._feeds import CHUNK as CHUNK
    from ._feeds import FeedState as FeedState
    from ._filters import F as F
    from ._filters import Filter as Filter
    from ._filters import filter_from_data as filter_from_data
    from ._kv import EXPIRES as EXPIRES
    from ._kv import NO_ID as NO_ID
    from ._kv import RECORD_SIZE as RECORD_SIZE
    from ._kv import TOMBSTONE as TOMBSTONE
    from ._kv import KvState as KvState
    from ._kv import VersionRecord as VersionRecord
    from ._layered import LazyList as LazyList
    from ._newtable import NewTable as NewTable
    from ._newtable import TableRef as TableRef
    from ._order import MISSING as MISSING
    from ._order import order_key as order_key
    from ._planner import QueryPlan as QueryPlan
    from ._projection import Projection as Projection
    from ._projection import Projections as Projections
    from ._projection import PutFold as PutFold
    from ._projection import ValuePlacement as ValuePlacement
    from ._projection import folds as folds
    from ._query import Group as Group
    from ._query import Query as Query
    from ._query import Row as Row
    from ._tiers import TierState as TierState
    from ._vectors import METRICS as METRICS
    from ._vectors import Hit as Hit
    from ._vectors import OldVersion as OldVersion
    from ._vectors import VectorState as VectorState

# Each name is imported from its module when first asked for (``from koru.projections
# import X`` included): a one-shot ``kdelta get`` then imports the key/value state's
# modules, not the query language (which needs attrs, about 17 ms to import), vectors or
# auth.
_LAZY: dict[str, str] = {
    "AuthState": "._auth",
    "MAX_DEPTH": "._capabilities",
    "MAX_STEPS": "._capabilities",
    "NEVER": "._capabilities",
    "Effective": "._capabilities",
    "Evaluator": "._capabilities",
    "Scope": "._capabilities",
    "escalation": "._capabilities",
    "expand": "._capabilities",
    "CHECKPOINT_FILE": "._checkpoint",
    "Checkpoint": "._checkpoint",
    "WriteTable": "._checkpoint",
    "capture_checkpoint": "._checkpoint",
    "decode_checkpoint": "._checkpoint",
    "encode_captured": "._checkpoint",
    "open_tables": "._checkpoint",
    "table_names": "._checkpoint",
    "state_digest": "._digest",
    "CHUNK": "._feeds",
    "FeedState": "._feeds",
    "EXPIRES": "._kv",
    "NO_ID": "._kv",
    "RECORD_SIZE": "._kv",
    "TOMBSTONE": "._kv",
    "KvState": "._kv",
    "VersionRecord": "._kv",
    "LazyList": "._layered",
    "NewTable": "._newtable",
    "TableRef": "._newtable",
    "MISSING": "._order",
    "order_key": "._order",
    "Projection": "._projection",
    "Projections": "._projection",
    "PutFold": "._projection",
    "ValuePlacement": "._projection",
    "folds": "._projection",
    "TierState": "._tiers",
    "METRICS": "._vectors",
    "Hit": "._vectors",
    "OldVersion": "._vectors",
    "VectorState": "._vectors",
    "F": "._filters",
    "Filter": "._filters",
    "filter_from_data": "._filters",
    "QueryPlan": "._planner",
    "Group": "._query",
    "Query": "._query",
    "Row": "._query",
}


__all__ = [
    "CHECKPOINT_FILE",
    "CHUNK",
    "EXPIRES",
    "MISSING",
    "NO_ID",
    "RECORD_SIZE",
    "TOMBSTONE",
    "Checkpoint",
    "NewTable",
    "TableRef",
    "TierState",
    "WriteTable",
    "FeedState",
    "F",
    "Filter",
    "filter_from_data",
    "Group",
    "KvState",
    "Projection",
    "Projections",
    "PutFold",
    "Query",
    "QueryPlan",
    "Row",
    "ValuePlacement",
    "VersionRecord",
    "capture_checkpoint",
    "decode_checkpoint",
    "encode_captured",
    "LazyList",
    "open_tables",
    "table_names",
    "order_key",
    # auth: identities, grants, revocations, seals, and which grants take effect
    "AuthState",
    "MAX_DEPTH",
    "MAX_STEPS",
    "NEVER",
    "Effective",
    "Evaluator",
    "Scope",
    "escalation",
    "expand",
    "folds",
    "METRICS",
    "Hit",
    "OldVersion",
    "VectorState",
    "state_digest",
]

__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals(), __all__)
