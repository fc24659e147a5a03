"""Small result files next to the HDF5 surfaces: JSON results cached under the inputs that produced them, and
CSV tables. Each is written under a temporary name and renamed, so a kill leaves the old file or the new one."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from typing import Any


def _replace_atomically(path: str, write: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        write(f)
    os.replace(path + ".tmp", path)


def read_cached(path: str, key: dict[str, Any]) -> Any | None:
    """The result stored at `path` if it was computed for exactly `key` (compared as JSON), else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    return stored["result"] if stored.get("key") == json.loads(json.dumps(key)) else None


def write_cached(path: str, key: dict[str, Any], result: Any) -> None:
    _replace_atomically(path, lambda f: json.dump({"key": key, "result": result}, f, indent=2))


def write_csv(path: str, rows: Iterable[dict[str, Any]], columns: list[str], float_format: str | None = None) -> None:
    """One row per dict (keys outside `columns` are left out); floats through `float_format` if given."""
    def fmt(v: Any) -> Any:
        return format(v, float_format) if float_format and isinstance(v, float) else v

    def write(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: fmt(v) for k, v in r.items()} for r in rows)

    _replace_atomically(path, write)
