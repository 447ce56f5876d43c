"""Which faults a run injects, and how often: drawn per seed from a profile.

A profile (``none``, ``default``, ``heavy``) gives ranges; :func:`draw_plan` draws one
rate from each range with the run's generator, so different seeds explore different
mixes (a seed with many crashes and few partitions, another the other way round) and
one seed always draws the same mix. The plan is printed with the run.
"""

from __future__ import annotations

import random

import attrs

from ._network import LinkFaults

__all__ = ["PROFILES", "FaultPlan", "draw_plan"]


@attrs.define(frozen=True)
class FaultPlan:
    """The faults of one run (rates per virtual minute are for the whole cluster)."""

    link: LinkFaults
    crashes_per_minute: float
    partitions_per_minute: float
    jumps_per_minute: float
    #: Fraction of partitions that are one-way (asymmetric).
    one_way: float
    #: Per node: initial clock skew (s) and virtual fsync latency (s; 0 = fast disk).
    skews: tuple[float, ...]
    latencies: tuple[float, ...]

    def describe(self) -> str:
        link = self.link
        slow = sum(1 for x in self.latencies if x)
        return (
            f"latency {link.latency * 1e3:.1f}ms+{link.jitter * 1e3:.1f}ms, "
            f"cut {link.cut:.4f}/frame, duplicate {link.duplicate:.4f}/frame, "
            f"corrupt {link.corrupt:.4f}/frame, crashes {self.crashes_per_minute:.2f}/min, "
            f"partitions {self.partitions_per_minute:.2f}/min ({self.one_way:.0%} one-way), "
            f"clock jumps {self.jumps_per_minute:.2f}/min, "
            f"skew up to {max((abs(s) for s in self.skews), default=0):.1f}s, "
            f"{slow} slow disk(s)"
        )


#: name -> (range per knob): cut, duplicate, corrupt per frame; crashes, partitions,
#: jumps per minute; max skew seconds; probability a node's disk is slow.
PROFILES: dict[str, dict[str, tuple[float, float]]] = {
    "none": {
        "cut": (0, 0),
        "duplicate": (0, 0),
        "corrupt": (0, 0),
        "crashes": (0, 0),
        "partitions": (0, 0),
        "jumps": (0, 0),
        "skew": (0, 0),
        "slow": (0, 0),
    },
    "default": {
        "cut": (0, 0.004),
        "duplicate": (0, 0.002),
        "corrupt": (0, 0.002),
        "crashes": (0.5, 4),
        "partitions": (0.5, 4),
        "jumps": (0, 2),
        "skew": (0, 30),
        "slow": (0, 0.5),
    },
    "heavy": {
        "cut": (0.002, 0.02),
        "duplicate": (0.001, 0.01),
        "corrupt": (0.001, 0.01),
        "crashes": (4, 12),
        "partitions": (4, 12),
        "jumps": (1, 6),
        "skew": (10, 120),
        "slow": (0.2, 0.8),
    },
}


def draw_plan(profile: str, nodes: int, rng: random.Random) -> FaultPlan:
    """One run's faults: every rate drawn from the profile's range."""
    ranges = PROFILES[profile]

    def draw(knob: str) -> float:
        low, high = ranges[knob]
        return rng.uniform(low, high)

    link = LinkFaults(
        latency=rng.uniform(0.0005, 0.02),
        jitter=rng.uniform(0.0005, 0.02),
        cut=draw("cut"),
        duplicate=draw("duplicate"),
        corrupt=draw("corrupt"),
    )
    crashes, partitions, jumps = draw("crashes"), draw("partitions"), draw("jumps")
    skew, slow = draw("skew"), draw("slow")
    skews = tuple(round(rng.uniform(-skew, skew), 3) for _ in range(nodes))
    latencies = tuple(
        round(rng.uniform(0.002, 0.05), 4) if rng.random() < slow else 0.0 for _ in range(nodes)
    )
    return FaultPlan(link, crashes, partitions, jumps, rng.random(), skews, latencies)
