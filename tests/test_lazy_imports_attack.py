"""Attacks on the lazy imports of ``koru.events`` and ``koru.projections`` (h-lazy):
what used to happen at import (a module-level logger) must still look the same to a
caller."""

from __future__ import annotations

import logging

import pytest

from koru.events import warn


def _a_layer_that_warns() -> None:
    warn("koru: %s", "something")


def test_a_warning_names_the_function_and_line_that_gave_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each layer warned through its own module-level ``logging.getLogger("koru")``, so a
    record's module, function and line were the warner's (a log format with
    ``%(module)s:%(lineno)d`` pointed at the cause). Through :func:`koru.events.warn`
    (logging imported on the first warning) every record named ``_warn.warn``."""
    with caplog.at_level(logging.WARNING, logger="koru"):
        _a_layer_that_warns()
    (record,) = caplog.records
    assert record.getMessage() == "koru: something"
    assert record.funcName == "_a_layer_that_warns"
    assert record.module == "test_lazy_imports_attack"
