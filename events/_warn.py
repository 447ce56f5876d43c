"""Warnings to the ``koru`` logger, with :mod:`logging` imported only when one is given.

Why not a module-level ``logging.getLogger``: importing :mod:`logging` (with the
modules it pulls in) costs about 5 ms, and a one-shot ``kdelta get`` imports every
layer that may warn while it warns nothing.
"""

from __future__ import annotations

__all__ = ["warn"]


def warn(message: str, *args: object) -> None:
    """``logging.getLogger("koru").warning(message, *args)``, as given by its caller (the
    record names its module, function and line)."""
    import logging

    logging.getLogger("koru").warning(message, *args, stacklevel=2)  # the caller's line
