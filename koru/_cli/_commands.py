"""Every command ``kdelta`` has, in the order ``--help`` lists them."""

from __future__ import annotations

from ._auth import AUTH_COMMANDS
from ._base import Command, Failure, Usage
from ._check import CHECK_COMMANDS
from ._data import DATA_COMMANDS
from ._events import EVENT_COMMANDS
from ._peers import PEER_COMMANDS
from ._query import QUERY_COMMANDS
from ._simulate import SIMULATE_COMMANDS
from ._transfer import TRANSFER_COMMANDS
from ._vectors import VECTOR_COMMANDS

__all__ = ["COMMANDS", "Failure", "Usage"]

COMMANDS: tuple[Command, ...] = (
    *DATA_COMMANDS,
    *QUERY_COMMANDS,
    *VECTOR_COMMANDS,
    *EVENT_COMMANDS,
    *CHECK_COMMANDS,
    *SIMULATE_COMMANDS,
    *TRANSFER_COMMANDS,
    *AUTH_COMMANDS,
    *PEER_COMMANDS,
)
