"""Simulations: deterministic runs of koru-delta under injected faults.

So far: :class:`SimDisk`, a simulated disk that can lose power at any instant (the
crash tests use it; the multi-node simulator will run every node on one).
"""

from ._disk import SECTOR as SECTOR
from ._disk import PowerCut as PowerCut
from ._disk import SimDisk as SimDisk

__all__ = ["SECTOR", "PowerCut", "SimDisk"]
