"""Lazy package fronts (PEP 562): a package names its public names and the module of each, and a name is imported
on first use. Importing a package therefore loads none of its modules, and no torch: a re-plot stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public names live in the modules `table` gives (relative
    to the package: "core.surface_file"). A name that is its module's own name ("metrics") is the module."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{table[name]}")
        return module if name == module.__name__.rpartition(".")[2] else getattr(module, name)

    def __dir__() -> list[str]:
        return sorted(set(table) | {"__all__", "__doc__", "__name__", "__path__"})

    return __getattr__, __dir__
