"""Supervision: the clock, group commit, checkpoints, the database's background tasks,
and peer sync (the sans-io protocol, its trio driver and its transports)."""

from ._checkpointer import CHECKPOINT_FILE as CHECKPOINT_FILE
from ._checkpointer import Checkpointer as Checkpointer
from ._checkpointer import prepare_checkpoints as prepare_checkpoints
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._clock import TrioClock as TrioClock
from ._committer import INLINE_SYNC_MAX as INLINE_SYNC_MAX
from ._committer import SYNC_MODES as SYNC_MODES
from ._committer import Committer as Committer
from ._committer import SyncMode as SyncMode
from ._feedtree import Feed as Feed
from ._feedtree import FeedTree as FeedTree
from ._pacer import Pacer as Pacer
from ._protocol import MALFORMED_BEFORE_HANDSHAKE as MALFORMED_BEFORE_HANDSHAKE
from ._protocol import Authenticate as Authenticate
from ._protocol import Challenged as Challenged
from ._protocol import Limits as Limits
from ._protocol import PeerProtocol as PeerProtocol
from ._protocol import Welcomed as Welcomed
from ._session import CallBudget as CallBudget
from ._session import Endpoint as Endpoint
from ._session import Handshake as Handshake
from ._session import NoFeeds as NoFeeds
from ._session import SessionEnd as SessionEnd
from ._session import StreamFailed as StreamFailed
from ._session import run_session as run_session
from ._supervisor import Policy as Policy
from ._supervisor import ProcessInfo as ProcessInfo
from ._supervisor import Supervisor as Supervisor
from ._supervisor import supervise as supervise
from ._transport import Connection as Connection
from ._transport import ConnectionClosed as ConnectionClosed
from ._transport import MemoryConnection as MemoryConnection
from ._transport import WebSocketConnection as WebSocketConnection
from ._transport import memory_pair as memory_pair
from ._transport import serve_websockets as serve_websockets
from ._wire import CLOSE_INTERNAL as CLOSE_INTERNAL
from ._wire import CLOSE_POLICY as CLOSE_POLICY
from ._wire import CLOSE_TRY_LATER as CLOSE_TRY_LATER
from ._wire import Msg as Msg
from ._wire import WireError as WireError

__all__ = [
    "CHECKPOINT_FILE",
    "CLOSE_INTERNAL",
    "CLOSE_POLICY",
    "CLOSE_TRY_LATER",
    "MALFORMED_BEFORE_HANDSHAKE",
    "Authenticate",
    "Challenged",
    "Connection",
    "ConnectionClosed",
    "Endpoint",
    "Feed",
    "FeedTree",
    "Handshake",
    "Limits",
    "MemoryConnection",
    "Msg",
    "Pacer",
    "PeerProtocol",
    "SessionEnd",
    "CallBudget",
    "NoFeeds",
    "StreamFailed",
    "WebSocketConnection",
    "Welcomed",
    "WireError",
    "memory_pair",
    "prepare_checkpoints",
    "run_session",
    "serve_websockets",
    "INLINE_SYNC_MAX",
    "SYNC_MODES",
    "Checkpointer",
    "Clock",
    "Committer",
    "Policy",
    "ProcessInfo",
    "Supervisor",
    "SyncMode",
    "SystemClock",
    "TrioClock",
    "supervise",
]
