"""A package whose names are imported from their modules when first used (PEP 562).

Why: a one-shot ``kdelta get`` imports ``koru.events`` and ``koru.projections`` for a
few names; importing every module of both (the query language's attrs, every event
type, vectors, auth) was about half of its start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str,
    modules: Mapping[str, str],
    namespace: MutableMapping[str, Any],
    names: Sequence[str],
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose global ``namespace`` gets
    each name of ``modules`` (name -> its module, relative to the package) from its module
    when first asked for (``from package import name`` included), kept there so that
    later lookups are plain; ``names``: the package's ``__all__``."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
