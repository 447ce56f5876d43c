"""Simulations: deterministic runs of koru-delta under injected faults.

* :class:`SimDisk`: a simulated disk that can lose power at any instant;
* :func:`simulate`: a cluster of real databases, each on its own :class:`SimDisk`,
  in one process under ``trio.testing.MockClock``, over a simulated :class:`Network`
  that cuts, delays, duplicates and corrupts frames and partitions nodes, with node
  crashes, clock skew and jumps and slow disks, every choice drawn from one seed;
  each run checks the invariants of :mod:`koru.simulations.invariants` and gives a
  trace digest (the same seed, the same digest). See ``docs/simulations.md``.

The simulator is imported on first use (``koru.simulations.simulate``), so importing
the package for :class:`SimDisk` alone (and the command line) stays light.
"""

from __future__ import annotations

import importlib
import typing

from ._disk import SECTOR as SECTOR
from ._disk import PowerCut as PowerCut
from ._disk import SimDisk as SimDisk

if typing.TYPE_CHECKING:
    from . import _invariants as invariants
    from ._clock import SimClock as SimClock
    from ._faults import PROFILES as PROFILES
    from ._faults import FaultPlan as FaultPlan
    from ._faults import draw_plan as draw_plan
    from ._network import LinkFaults as LinkFaults
    from ._network import Network as Network
    from ._run import Config as Config
    from ._run import Report as Report
    from ._run import simulate as simulate
    from ._scale import scale_table as scale_table
    from ._workload import Op as Op
    from ._workload import Record as Record

__all__ = [
    "PROFILES",
    "SECTOR",
    "Config",
    "FaultPlan",
    "LinkFaults",
    "Network",
    "Op",
    "PowerCut",
    "Record",
    "Report",
    "SimClock",
    "SimDisk",
    "draw_plan",
    "invariants",
    "scale_table",
    "simulate",
]

_LAZY = {
    "PROFILES": "_faults",
    "FaultPlan": "_faults",
    "draw_plan": "_faults",
    "LinkFaults": "_network",
    "Network": "_network",
    "Config": "_run",
    "Report": "_run",
    "simulate": "_run",
    "SimClock": "_clock",
    "scale_table": "_scale",
    "Op": "_workload",
    "Record": "_workload",
}


def __getattr__(name: str) -> typing.Any:
    if name == "invariants":
        return importlib.import_module(f"{__name__}._invariants")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
