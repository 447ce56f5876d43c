"""``kdelta simulate``: the deterministic multi-node simulator (``koru.simulations``).

The simulator is imported when the command runs, so the command line starts as fast
as before.
"""

from __future__ import annotations

import argparse

from ._base import Command

__all__ = ["SIMULATE_COMMANDS"]


def _args(p: argparse.ArgumentParser) -> None:
    from koru.simulations._cli import add_arguments

    add_arguments(p)


def _simulate(args: argparse.Namespace) -> int:
    from koru.simulations._cli import run

    return run(args)


SIMULATE_COMMANDS: tuple[Command, ...] = (
    Command(
        "simulate",
        "run a cluster of nodes under injected faults from one seed; check every invariant",
        "kdelta simulate --seed 42 --nodes 5 --duration 1h --faults default",
        _args,
        _simulate,
    ),
)
