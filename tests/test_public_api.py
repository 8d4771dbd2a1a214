"""Each public module's ``__all__`` matches what it exposes, and resolves."""

from __future__ import annotations

import importlib
import types

import pytest

MODULES = [
    "apientreprise_async",
    "apientreprise_async.audit",
    "apientreprise_async.backends",
    "apientreprise_async.records",
    "apientreprise_async.host",
    "apientreprise_async.redis",
    "apientreprise_async.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    """No public name is missing from ``__all__``; every listed name exists."""
    module = importlib.import_module(name)
    exported = set(module.__all__)
    for item in exported:
        assert hasattr(module, item), f"{name}.{item} is listed but missing"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and attr not in {"annotations", "TYPE_CHECKING"}
        and getattr(value, "__module__", name).startswith("apientreprise_async")
    }
    assert set() == public - exported


def test_private_modules_are_marked() -> None:
    """Implementation modules start with an underscore."""
    import apientreprise_async

    assert apientreprise_async.__version__
    assert "_client" in dir(apientreprise_async)
