"""Curve files (kind "curve", since 0.8): landscape.connect's paths between two minima, written and read here.

  /t (n,), /paths/<line|aligned_line|curve>/<metric> and .../done (n,), /bend/<tensor>, /permutations/<name>,
  attributes curve, checkpoint(_sha256), target_checkpoint, target_sha256, fingerprint, config, alignment,
  training, bend_at (see Curve), beside the header every file of ours has (landscape.core.surface_file).
Points are flushed as they finish, as a surface's are; a curve file refuses to be read as a surface, and back.
"""

from __future__ import annotations

import json
import os
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import h5py
import numpy as np

from landscape.base.errors import UserError
from landscape.base.files import atomic_path
from landscape.core.fingerprint import check_fingerprint
from landscape.core.surface_file import (
    CURVE,
    Arrays,
    Origin,
    Surface,
    SurfaceWriter,
    Training,
    check_ours,
    header,
    json_attr,
    open_h5,
)


@dataclass
class Curve:
    """A curve file's content: each path between A and B (line, aligned_line, curve) as a 1D Surface over t, the
    curve's type, the bend's place in the plane through A, B and the bend, the alignment found and the training's
    record. Barriers are computed from the values (landscape.connectivity.barriers), not stored."""

    t: np.ndarray
    paths: dict[str, Surface]
    curve: str  # bezier, polychain, or none
    _: KW_ONLY  # the fields below are keyword-only
    origin: Origin = field(default_factory=Origin)  # A, with B as its target
    target_sha256: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    alignment: dict[str, Any] = field(default_factory=dict)  # {} without --align
    training: dict[str, Any] = field(default_factory=dict)  # epoch losses, steps, seconds
    bend_at: tuple[float, float] | None = None  # (alpha, beta) of the bend in plot2d's plane A, B, bend


def _write_curve(path: str, c: Curve, bend: Arrays, perms: dict[str, np.ndarray]) -> None:
    """A new curve file, written atomically: every path's values NaN and not done, the bend, the permutations."""
    o = c.origin
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({
            **header(), "kind": CURVE, "curve": c.curve, "fingerprint": json.dumps(c.fingerprint, sort_keys=True),
            "config": json.dumps(c.config), "checkpoint": o.checkpoint, "checkpoint_sha256": o.checkpoint_sha256,
            "target_checkpoint": o.target, "target_sha256": c.target_sha256, "model": json.dumps(o.model),
            "checkpoint_metrics": json.dumps(o.metrics), "checkpoint_train_config": json.dumps(o.training.config),
            "alignment": json.dumps(c.alignment), "training": json.dumps(c.training), "acc_unit": "percent",
            "bend_at": json.dumps(list(c.bend_at) if c.bend_at is not None else None),
            "paths": json.dumps(list(c.paths))})
        scale = f.create_dataset("t", data=np.asarray(c.t, np.float64))
        scale.make_scale("t")
        for name, s in c.paths.items():
            g = f.create_group(f"paths/{name}")
            g.attrs["metrics"] = json.dumps(list(s.values))
            g.attrs["loss_metrics"] = json.dumps(s.config.get("loss_metrics", []))
            for m, data in [*s.values.items(), ("done", s.done.astype(np.uint8))]:
                g.create_dataset(m, data=data).dims[0].attach_scale(scale)
        for k, v in bend.items():
            f.create_dataset(f"bend/{k}", data=np.asarray(v, np.float32))
        for k, v in perms.items():
            f.create_dataset(f"permutations/{k}", data=np.asarray(v, np.int64))


class CurveFile:
    """A curve file open for writing (rank 0 only): `sink(name)` is the Sink of one path's points, flushed row by
    row as a surface's are."""

    def __init__(self, path: str, curve: Curve):
        self.path, self.curve = path, curve
        self.file = open_h5(path, "r+")

    def sink(self, name: str) -> SurfaceWriter:
        s = self.curve.paths[name]
        return SurfaceWriter(self.path, s, list(s.values), self.file, f"paths/{name}/")

    def close(self) -> None:
        self.file.close()


def open_curve(path: str, c: Curve, bend: Arrays, perms: dict[str, np.ndarray]) -> CurveFile:
    """The curve file of a request, created with `c`'s paths (all points to do), the bend and the permutations
    if missing; an existing file must have been made with the same fingerprint (endpoints, curve, training,
    alignment, evaluation, t), or it is refused and left untouched. Its points done are kept."""
    if os.path.exists(path):
        old = read_curve(path)
        check_fingerprint(path, old.fingerprint, c.fingerprint)
        missing = [p for p in c.paths if p not in old.paths]
        if missing:
            raise UserError(f"{path} lacks the paths {missing}; it was made for others: use another --out")
        return CurveFile(path, old)
    _write_curve(path, c, bend, perms)
    return CurveFile(path, c)


def read_curve(path: str) -> Curve:
    """A curve file (landscape.connect's)."""
    if not os.path.exists(path):
        raise UserError(f"curve file not found: {path}")
    with open_h5(path, "r") as f:
        check_ours(f, path, CURVE)
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        t = f["t"][...]
        training = Training.from_train_config(json_attr(a, "checkpoint_train_config"))
        origin = Origin(a["checkpoint"], a["checkpoint_sha256"], a["target_checkpoint"], json_attr(a, "model"),
                        json_attr(a, "checkpoint_metrics"), training)
        config = json_attr(a, "config")
        paths = {}
        for name in json.loads(a["paths"]):
            g = f[f"paths/{name}"]
            values = {m: g[m][...] for m in json.loads(g.attrs["metrics"])}
            paths[name] = Surface(t, None, values, g["done"][...].astype(bool), origin,
                                  config={**config, "loss_metrics": json.loads(g.attrs["loss_metrics"])})
    bend_at = json.loads(a.get("bend_at") or "null")
    return Curve(t, paths, a["curve"], origin=origin, target_sha256=a["target_sha256"], config=config,
                 fingerprint=json_attr(a, "fingerprint"),
                 alignment=json_attr(a, "alignment"), training=json_attr(a, "training"),
                 bend_at=tuple(bend_at) if bend_at else None)


def read_bend(path: str) -> Arrays:
    """The bend's weights stored in a curve file, by tensor name."""
    with open_h5(path, "r") as f:
        check_ours(f, path, CURVE)
        return {k: f["bend"][k][...] for k in f["bend"]} if "bend" in f else {}
