"""The simulator's command line, shared by ``python -m koru.simulations`` and
``kdelta simulate``.

One seed (``--seed 42``) or a range (``--seeds 1000`` runs ``seed`` .. ``seed+999``);
each run prints its report (seed, faults drawn and injected, invariants checked,
trace digest) and a failing one the command that replays it. ``--scale`` measures
convergence and bytes per node for several cluster sizes instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable

from ._duration import parse_duration

__all__ = ["PROFILE_NAMES", "add_arguments", "main", "run"]

WORKLOADS = ("kv", "tokens", "vectors", "grants", "remote")
#: The fault profiles (``koru.simulations.PROFILES``), named here so that building the
#: parser imports nothing heavy.
PROFILE_NAMES = ("default", "heavy", "none")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _at_least(low: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {n}")
        return n

    return count


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # Why finite: nan passed a "> 0" check and failed inside the run with a traceback;
    # an infinite rate never let virtual time advance, so the run never ended.
    if not 0 < rate < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive, finite rate, not {text!r}")
    return rate


def _workload(text: str) -> tuple[str, ...]:
    kinds = tuple(k for k in text.split(",") if k)
    unknown = [k for k in kinds if k not in WORKLOADS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"workloads are {', '.join(WORKLOADS)}, not {text!r}")
    return kinds


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are numbers, not {text!r}") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("a cluster has at least 2 nodes")
    return sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=42, help="the seed (the first, with --seeds)")
    p.add_argument(
        "--seeds", type=_at_least(1), default=1, help="run this many seeds from --seed on"
    )
    p.add_argument("--nodes", type=_at_least(1), default=5, help="nodes in the cluster (default 5)")
    p.add_argument(
        "--duration",
        type=_duration,
        default=None,
        help="virtual time of faults and workload: 90s, 5m, 1h (default 1h; 20s with --scale)",
    )
    p.add_argument("--faults", choices=PROFILE_NAMES, default="default", help="fault profile")
    p.add_argument("--clients", type=_at_least(0), default=2, help="clients per node (default 2)")
    p.add_argument("--rate", type=_rate, default=1.0, help="operations/s per client")
    p.add_argument(
        "--workload",
        type=_workload,
        default=WORKLOADS,
        help="kv,tokens,vectors,grants,remote (default all)",
    )
    p.add_argument("--trace", action="store_true", help="print the whole trace of each run")
    p.add_argument(
        "--scale",
        type=_sizes,
        metavar="SIZES",
        help="measure convergence and bytes per node for these cluster sizes (e.g. 5,20,50)",
    )


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` asks; 0 if every run kept every invariant, else 1."""
    from ._run import Config, simulate

    # Recovery warns, on stderr, of every torn tail it sets aside: after a power cut
    # that is expected (the invariants judge what was lost), and hundreds of crashes
    # would bury the reports.
    logging.getLogger("koru").addHandler(logging.NullHandler())
    if args.nodes < 1 or args.seeds < 1 or args.clients < 0 or args.rate <= 0:
        raise SystemExit("--nodes, --seeds and --rate must be positive, --clients not negative")
    if args.scale:
        from ._scale import scale_table

        duration = 20.0 if args.duration is None else args.duration
        print(scale_table(args.scale, seed=args.seed, duration=duration))
        return 0
    failed: list[int] = []
    began = time.perf_counter()  # clock-ok: seeds per second, for the summary
    for seed in range(args.seed, args.seed + args.seeds):
        config = Config(
            seed=seed,
            nodes=args.nodes,
            duration=3600.0 if args.duration is None else args.duration,
            faults=args.faults,
            clients=args.clients,
            rate=args.rate,
            workload=args.workload,
            keep_trace=args.trace,
        )
        report = simulate(config)
        if args.trace:
            print("\n".join(report.trace_lines))
        print(report.text(), flush=True)
        if not report.ok:
            failed.append(seed)
    if args.seeds > 1:
        took = time.perf_counter() - began  # clock-ok: see above
        print(
            f"{args.seeds} seeds in {took:.1f}s ({took / args.seeds:.1f}s a seed): "
            + (f"{len(failed)} FAILED: {failed}" if failed else "all passed")
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m koru.simulations",
        description="Deterministic multi-node simulation of koru-delta under faults.",
    )
    add_arguments(p)
    return run(p.parse_args(argv))
