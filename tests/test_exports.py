"""The public surface: every exported name exists, is documented, and nothing leaks."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import koru

PACKAGES = ["koru", "koru.events", "koru.projections", "koru.nursery", "koru.simulations"]


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


def modules_after_import(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    return set(out.stdout.split())


FACE = {
    f"koru.{name}"
    for name in (
        "_api",
        "_cache",
        "_database",
        "_ingest",
        "_lifecycle",
        "_loader",
        "_open",
        "_reader",
        "_stats",
        "_writer",
    )
}


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import koru", {"trio", "koru.events", "koru.nursery", *FACE}),
        ("import koru.events", {"trio", "koru.projections", "koru.nursery", *FACE}),
        ("import koru.projections", {"trio", "koru.nursery", *FACE}),
        ("import koru.nursery", FACE),
    ],
)
def test_layers_point_down_at_import_time(statement: str, forbidden: set[str]) -> None:
    """The lower layers pull in no trio and no module of the face (the face resolves its
    names lazily), so a one-shot reader of a log pays only for what it uses."""
    loaded = modules_after_import(statement)
    assert not loaded & forbidden, sorted(loaded & forbidden)
    if "trio" in forbidden:
        assert not any(m == "trio" or m.startswith("trio.") for m in loaded)


def test_the_lazy_face_resolves_every_name_and_refuses_others() -> None:
    loaded = modules_after_import("import koru; koru.open; koru.KoruError")
    assert "koru._open" in loaded and "trio" in loaded
    for name in koru.__all__:
        assert getattr(koru, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        koru.no_such_name  # noqa: B018
    assert set(koru.__all__) <= set(dir(koru))
