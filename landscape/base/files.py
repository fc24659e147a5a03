"""Files written whole or not at all. Every file of ours (checkpoints, new HDF5 surfaces, JSON and CSV records,
config.json) is written under a temporary name, flushed to disk and renamed over its final name by
`atomic_path`, so a kill at any moment leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path` to write to; when the block ends, the file is fsynced and renamed
    onto `path` (os.replace is atomic). If the block raises, the temporary file is removed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def strict_json(obj: Any) -> Any:
    """obj with every non-finite float (NaN, inf) as None, so that the JSON is strict (null) and any parser, jq
    included, reads it; tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def read_cached(path: str, key: dict[str, Any]) -> Any | None:
    """The result stored at `path` if it was computed for exactly `key` (compared as JSON), else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    return stored["result"] if stored.get("key") == strict_json(json.loads(json.dumps(key))) else None


def write_cached(path: str, key: dict[str, Any], result: Any) -> None:
    write_json(path, {"key": key, "result": result})


def write_csv(path: str, rows: Iterable[dict[str, Any]], columns: list[str], float_format: str | None = None) -> None:
    """One row per dict (keys outside `columns` are left out); floats through `float_format` if given."""
    def fmt(v: Any) -> Any:
        return format(v, float_format) if float_format and isinstance(v, float) else v

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: fmt(v) for k, v in r.items()} for r in rows)
