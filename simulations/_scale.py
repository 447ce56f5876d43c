"""How sync cost grows with the cluster: convergence time and bytes per node.

Each size runs the same per-node workload (key-value churn, two clients a node at one
operation a second, no faults) on the simulator's topology (a ring plus up to two
chords a node); then every node writes once more, at the same instant, and the run
measures the virtual time until every node holds the same digest, and the bytes each
node sent (frames of the sync protocol). Every node
must receive every event, so bytes per node per event is the protocol's unit cost:
flat while the cost is linear in the events, rising where the reconciliation (heads,
summaries, duplicates pushed by several neighbours) grows faster.
"""

from __future__ import annotations

import attrs

from ._run import Config, simulate

__all__ = ["ScaleRow", "measure", "scale_table"]


@attrs.define(frozen=True)
class ScaleRow:
    nodes: int
    events: int
    convergence: float | None
    bytes_per_node: int
    wall: float
    ok: bool

    @property
    def bytes_per_event(self) -> float:
        return self.bytes_per_node / max(1, self.events)


def measure(nodes: int, *, seed: int = 1, duration: float = 20.0) -> ScaleRow:
    report = simulate(
        Config(seed=seed, nodes=nodes, duration=duration, faults="none", workload=("kv",))
    )
    return ScaleRow(
        nodes,
        report.events,
        report.convergence,
        sum(report.bytes_sent) // max(1, nodes),
        report.wall,
        report.ok,
    )


def scale_table(sizes: tuple[int, ...], *, seed: int = 1, duration: float = 20.0) -> str:
    """A markdown table, one row per cluster size."""
    lines = [
        f"Workload: key-value churn, 2 clients/node at 1 op/s for {duration:g}s virtual, "
        f"no faults, seed {seed}.",
        "",
        "| nodes | events | convergence (virtual) | bytes sent per node | per node per event "
        "| wall | invariants |",
        "|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for n in sizes:
        row = measure(n, seed=seed, duration=duration)
        conv = "never" if row.convergence is None else f"{row.convergence:.2f}s"
        lines.append(
            f"| {n} | {row.events:,} | {conv} | {row.bytes_per_node:,} | "
            f"{row.bytes_per_event:,.0f} B | {row.wall:.1f}s | {'ok' if row.ok else 'VIOLATED'} |"
        )
    return "\n".join(lines)
