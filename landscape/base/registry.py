"""The registries of extensions: named records of one kind (sharpness measures, weights formats, remedies), in the
order they were registered, a second record under a taken name refused."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar


class Named(Protocol):
    name: str


R = TypeVar("R", bound=Named)


class Registry(dict[str, Any]):
    """A dict of records by their `name`; `add` registers one (and returns it, so it reads as a statement or a
    decorator), refusing a name already taken."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, record: R) -> R:
        if record.name in self:
            raise ValueError(f"a {self.kind} {record.name!r} is registered already")
        self[record.name] = record
        return record
