"""The HDF5 surface schema: the reference implementation's datasets plus what resuming needs.

  /xcoordinates (nx,) and /ycoordinates (ny,)   dimension scales, attached to every metric
  /train_loss /train_acc /test_loss /test_acc    (nx, ny) or (nx,) in 1D; acc in percent; NaN where not done
  /done                                          uint8 mask of finished points, same shape
  /directions/d1/<param name>, /directions/d2/<param name>   float32, keyed by parameter name
  root attributes: schema_version, fingerprint (JSON: what must match to resume), config (JSON),
                   checkpoint path and sha256, directions_sha256, created_by

Only one process (rank 0) opens a file for writing. New files are built under a temporary name and
renamed into place; points are written and flushed as they finish, so a kill loses only points in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import torch

from landscape import __version__
from landscape.errors import UserError
from landscape.files import atomic_path
from landscape.params import Params

SCHEMA_VERSION = 1
PRODUCER = "landscape"


def metric_names(splits: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{s}_{m}" for s in splits for m in ("loss", "acc")]


def directions_sha256(directions: list[Params]) -> str:
    """A content hash of the directions (names, shapes and float32 bytes), independent of device."""
    h = hashlib.sha256()
    for i, d in enumerate(directions):
        for k in sorted(d):
            t = d[k].detach().to("cpu", torch.float32).contiguous()
            h.update(f"{i}/{k}/{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Surface:
    """A surface file's content in memory."""

    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    done: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        return self.y is not None

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("config", "{}"))


def _open(path: str, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        reason = " ".join(str(exc).split())
        if "lock" in reason.lower():
            raise UserError(f"{path} is open for writing by another process ({reason}); wait for it to finish or use "
                            "another --out") from None
        raise UserError(f"{path} is not a readable HDF5 file ({reason[:120]}); move it away or choose another "
                        "--out") from None


def _check_ours(f: h5py.File, path: str) -> None:
    if f.attrs.get("producer") != PRODUCER or "schema_version" not in f.attrs:
        raise UserError(f"{path} is an HDF5 file but not a landscape surface; move it away or choose another --out")
    if int(f.attrs["schema_version"]) > SCHEMA_VERSION:
        raise UserError(f"{path} has schema version {int(f.attrs['schema_version'])}, newer than this landscape "
                        f"({SCHEMA_VERSION}); upgrade landscape")


def _write_directions(group: h5py.Group, directions: list[Params]) -> None:
    for i, d in enumerate(directions):
        sub = group.create_group(f"d{i + 1}")
        for k, v in d.items():
            sub.create_dataset(k, data=v.detach().to("cpu", torch.float32).numpy())


def create_surface(path: str, x: np.ndarray, y: np.ndarray | None, metrics: list[str], directions: list[Params],
                   fingerprint: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Write a new, empty surface file atomically (temporary name, then os.replace)."""
    shape = (len(x),) if y is None else (len(x), len(y))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["producer"] = PRODUCER
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["created_by"] = f"landscape {__version__}"
        f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        for k, v in attrs.items():
            f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        scales = [f.create_dataset("xcoordinates", data=np.asarray(x, np.float64))]
        if y is not None:
            scales.append(f.create_dataset("ycoordinates", data=np.asarray(y, np.float64)))
        for axis, ds in zip("xy", scales):
            ds.make_scale(axis)
        for name in [*metrics, "done"]:
            ds = f.create_dataset(name, shape=shape, dtype=np.uint8 if name == "done" else np.float64,
                                  fillvalue=0 if name == "done" else np.nan)
            for dim, (axis, scale) in enumerate(zip("xy", scales)):
                ds.dims[dim].attach_scale(scale)
                ds.dims[dim].label = axis
        _write_directions(f.create_group("directions"), directions)


class SurfaceWriter:
    """Holds one surface file open (rank 0 only), keeps its arrays in memory and flushes finished points."""

    def __init__(self, path: str, fingerprint: dict[str, Any], metrics: list[str]):
        self.path = path
        self.file = _open(path, "r+")
        try:
            _check_ours(self.file, path)
            check_fingerprint(path, json.loads(self.file.attrs["fingerprint"]), fingerprint)
            missing = [m for m in metrics if m not in self.file]
            if missing:
                raise UserError(f"{path} lacks {missing}; it was made for other splits: use another --out")
            self.values = {m: self.file[m][...] for m in metrics}
            self.done = self.file["done"][...].astype(bool)
        except BaseException:
            self.file.close()
            raise

    def write(self, flat_idx: np.ndarray, rows: np.ndarray) -> None:
        """Store rows (len(flat_idx), n_metrics) at flat point indices, then mark them done; flush after each."""
        for j, m in enumerate(self.values):
            self.values[m].reshape(-1)[flat_idx] = rows[:, j]
            self.file[m][...] = self.values[m]
        self.file.flush()  # values reach the file before the mask that says they are valid
        self.done.reshape(-1)[flat_idx] = True
        self.file["done"][...] = self.done.astype(np.uint8)
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> SurfaceWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_fingerprint(path: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to mix points: every field that determines the values must match."""
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if diff:
        names = {"checkpoint_sha256": "another checkpoint", "directions_sha256": "other directions",
                 "xcoordinates": "another x grid", "ycoordinates": "another y grid"}
        what = ", ".join(names.get(k, k) for k in diff)
        raise UserError(f"{path} was made with {what}; refusing to mix results: choose another --out, or delete "
                        "the file to start over")


def read_surface(path: str) -> Surface:
    if not os.path.exists(path):
        raise UserError(f"surface file not found: {path}")
    with _open(path, "r") as f:
        _check_ours(f, path)
        names = [k for k in ("train_loss", "train_acc", "test_loss", "test_acc") if k in f]
        return Surface(x=f["xcoordinates"][...], y=f["ycoordinates"][...] if "ycoordinates" in f else None,
                       values={k: f[k][...] for k in names}, done=f["done"][...].astype(bool),
                       attrs={k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()})


def read_directions(path: str) -> list[Params]:
    """The directions stored in a surface (or direction) file, keyed by parameter name, float32 on CPU."""
    if not os.path.exists(path):
        raise UserError(f"direction file not found: {path}")
    with _open(path, "r") as f:
        _check_ours(f, path)
        if "directions" not in f:
            raise UserError(f"{path} holds no directions; give a surface file written by landscape")
        g = f["directions"]
        return [{k: torch.from_numpy(g[name][k][...]) for k in g[name]} for name in sorted(g)]


def save_directions(path: str, directions: list[Params], attrs: dict[str, Any]) -> None:
    """A standalone direction file (same layout as in a surface file), written atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["producer"] = PRODUCER
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["directions_sha256"] = directions_sha256(directions)
        for k, v in attrs.items():
            f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        _write_directions(f.create_group("directions"), directions)
