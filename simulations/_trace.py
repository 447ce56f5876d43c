"""The trace of a run: every operation, fault and check, in order, and its digest.

A line per record (virtual time in microseconds, then words); the digest is blake3 of
the lines. Two runs of one seed must give byte-identical traces: the determinism test
compares the digests, and a failing seed's trace can be printed to diff two runs.
"""

from __future__ import annotations

import blake3
import trio

__all__ = ["Trace"]


class Trace:
    """An append-only list of lines with a running blake3."""

    def __init__(self, keep: bool = False) -> None:
        self._hash = blake3.blake3(b"koru-delta/simulation-trace/v1\n")
        self.keep = keep
        self.lines: list[str] = []
        self.count = 0

    def add(self, *words: object) -> None:
        try:
            now = round(trio.current_time() * 1e6)
        except RuntimeError:  # outside trio (the final checks)
            now = -1
        line = f"{now} " + " ".join(str(w) for w in words)
        self._hash.update(line.encode() + b"\n")
        self.count += 1
        if self.keep:
            self.lines.append(line)

    def digest(self) -> str:
        return self._hash.hexdigest()
