"""Durations on the command line: ``90`` or ``90s``, ``5m``, ``1h``, ``1h30m``."""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``.

    Raises:
        ValueError: not a duration.
    """
    text = text.strip().lower()
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"not a duration: {text!r} (try 90s, 5m, 1h)")
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if not text or total <= 0:
        raise ValueError(f"not a positive duration: {text!r}")
    if total == math.inf:  # (hundreds of digits): a run that never ends
        raise ValueError(f"not a finite duration: {text[:40]!r}")
    return total
