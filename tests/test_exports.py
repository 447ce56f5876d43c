"""The public surface: every exported name exists, is documented, and nothing leaks."""

from __future__ import annotations

import importlib
import inspect

import pytest

import koru

PACKAGES = ["koru", "koru.events", "koru.projections", "koru.nursery"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    assert len(set(module.__all__)) == len(module.__all__)
    for export in module.__all__:
        obj = getattr(module, export)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name}.{export} has no docstring"


@pytest.mark.parametrize("name", PACKAGES)
def test_no_public_name_is_missing_from_all(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and not inspect.ismodule(obj) and n not in {"annotations"}
    }
    assert public <= set(module.__all__) | {"__version__"}


def test_error_tree_is_rooted_in_koru_error() -> None:
    errors = [getattr(koru, n) for n in koru.__all__ if n.endswith("Error")]
    assert len(errors) >= 12
    for err in errors:
        assert issubclass(err, koru.KoruError)
    assert issubclass(koru.InvalidDataError, ValueError)
    assert issubclass(koru.KeyNotFoundError, LookupError)
    assert issubclass(koru.CorruptLogError, koru.StorageError)


def test_mapped_packages_install_under_koru() -> None:
    import koru.events
    import koru.nursery
    import koru.projections

    for mod in (koru.events, koru.nursery, koru.projections):
        assert mod.__name__.startswith("koru.")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("events")
