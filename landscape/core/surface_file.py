"""Surface and direction files and their one owner: every dataset and attribute of a surface or direction file is
written and read here, through typed fields (`Surface`, `Origin`, `Training`), and the checks every file of ours
passes (opening, producer, schema, kind) are made here; curve files are landscape.core.curve_file's. Nothing else
opens these files.

Schema 2 (landscape 0.2):
  /xcoordinates (nx,), /ycoordinates (ny,)   dimension scales, attached to every metric and to /done
  /<metric>   (ny, nx) in 2D: row i is y[i] and column j is x[j], the reference implementation's and
              matplotlib's layout; (nx,) in 1D. float64, NaN where not done, accuracies in percent. The
              reference implementation's names: train_loss, train_acc, test_loss, test_acc.
  /done       uint8 mask of the finished points, same shape
  /directions/d1/<parameter name>, /directions/d2/<parameter name>   float32, keyed by parameter name; since 0.7
              only the tensors a direction moves (non-zero), the group's `tensors` attribute listing every
              (name, shape) so that the others read as zeros
  root attributes: producer, schema_version, created_by, metrics (JSON list of the metric datasets),
    fingerprint (JSON: what a resume must match), config (JSON: the request as resolved), checkpoint,
    checkpoint_sha256, target_checkpoint, directions_sha256, model, checkpoint_metrics and
    checkpoint_train_config (JSON, as the checkpoint holds them), acc_unit, report (JSON: the sanity report)
  kind (since 0.8): "surface" (files without it are surfaces), or "curve" (landscape.core.curve_file). Each kind
    refuses to be read as the other.
Schema 1 (landscape 0.1) laid 2D arrays out as (nx, ny): it is read transposed, and resuming one rewrites it in
schema 2 first. Only one process (rank 0) opens a file for writing. A new file is written whole under a temporary
name and renamed; points are then written and flushed as they finish, so a kill loses only the points in flight.
Arrays only: the caller turns tensors into numpy (landscape.core.params.to_numpy), so reading a file needs no torch.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import h5py
import numpy as np

from landscape import __version__
from landscape.base.errors import UserError
from landscape.base.files import atomic_path
from landscape.base.grid import grid_shape
from landscape.core.fingerprint import as_array, check_fingerprint, directions_sha256, fingerprint_of

SCHEMA_VERSION = 2
PRODUCER = "landscape"
SURFACE, CURVE = "surface", "curve"  # the root attribute `kind` (since 0.8; a file without it is a surface)
_SCHEMA1_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")

Arrays = dict[str, np.ndarray]  # one direction: parameter name -> float32 array


@dataclass(frozen=True)
class Training:
    """How the centre checkpoint was trained, as the trainer's config stored in it says (empty for weights that
    trainers.train did not write)."""

    global_batch_size: int | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    lr: float | None = None
    epochs: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the trainer's whole config, verbatim

    @classmethod
    def from_train_config(cls, config: dict[str, Any]) -> Training:
        """The typed fields of a trainers.train config, whose `batch_size` is the global batch."""
        return cls(config.get("batch_size"), config.get("weight_decay"), config.get("optimizer"), config.get("lr"),
                   config.get("epochs"), dict(config))


@dataclass(frozen=True)
class Origin:
    """The weights at the centre of a surface, and what their checkpoint says about them."""

    checkpoint: str = ""  # absolute path of the checkpoint when the surface was made
    checkpoint_sha256: str = ""
    target: str = ""  # the second checkpoint of an interpolation, "" if none
    model: dict[str, Any] = field(default_factory=dict)  # {"name": ..., "kwargs": {...}}
    metrics: dict[str, float] = field(default_factory=dict)  # the checkpoint's own (train_loss, test_acc, ...)
    training: Training = field(default_factory=Training)


@dataclass(frozen=True)
class Markers:
    """Named points on a surface's plane, in grid units: a trajectory's checkpoints (kind "path", in training
    order) or the checkpoints a plane goes through (kind "points")."""

    names: tuple[str, ...]
    coords: np.ndarray  # (n, n_directions)
    kind: str = "points"

    def __post_init__(self) -> None:
        if self.kind not in ("path", "points"):
            raise ValueError(f"markers kind {self.kind!r}: path or points")
        if len(self.names) != len(self.coords):
            raise ValueError(f"{len(self.names)} marker names for {len(self.coords)} coordinates")


@dataclass(frozen=True)
class Annotations:
    """What a plane through checkpoints adds to a surface: axis names, markers, a PCA's explained variance."""

    axis_labels: tuple[str, ...] = ()  # e.g. ("1st PC: 82.11 %", "2nd PC: 9.40 %"); () for alpha/beta
    markers: Markers | None = None
    explained_variance_ratio: tuple[float, ...] = ()
    curve: np.ndarray | None = None  # (n, 2): a curve trained between the plane's first two checkpoints (0.8)


@dataclass
class Surface:
    """A surface file's content in memory; its directions are read apart (read_directions)."""

    x: np.ndarray
    y: np.ndarray | None  # None: a 1D curve
    values: dict[str, np.ndarray]  # metric name -> (ny, nx), or (nx,) in 1D
    done: np.ndarray  # bool, same shape
    origin: Origin = field(default_factory=Origin)
    _: KW_ONLY  # the fields below are keyword-only
    config: dict[str, Any] = field(default_factory=dict)  # the request as resolved (a SurfaceConfig)
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what a resume must match
    directions_sha256: str = ""
    schema_version: int = SCHEMA_VERSION
    report: dict[str, Any] = field(default_factory=dict)  # the sanity report made before computing
    annotations: Annotations = field(default_factory=Annotations)

    @property
    def is_2d(self) -> bool:
        return self.y is not None

    def axis_names(self) -> tuple[str, str]:
        """The axes' names: those the file gives (a trajectory's principal components), else alpha (d1), beta (d2)."""
        given = self.annotations.axis_labels
        return (given[0] if given else "alpha (d1)"), (given[1] if len(given) > 1 else "beta (d2)")

    def loss_metrics(self) -> list[str]:
        """The metrics that are losses (one per data set), as the evaluation named them; for files that do not
        say (before 0.7), those ending in "loss", else the first metric."""
        named = [m for m in self.config.get("loss_metrics") or [] if m in self.values]
        return named or [m for m in self.values if m.endswith("loss")] or list(self.values)[:1]

    def plot(self, kind: str = "contour", metric: str | None = None, ax: Any = None, **kwargs: Any) -> Any:
        """Draw one metric (default: the first loss) on `ax` (default: a new figure) and return the artist.

        kind: contour, filled, heatmap or 3d for a 2D surface; line (loss, with accuracy on a twin axis when
        there is one) for a 1D curve. kwargs go to the landscape.drawing.artists function (levels, vmin, vmax, ...)."""
        from landscape.drawing.artists import plot_surface  # matplotlib only when something is drawn

        metric = metric or self.loss_metrics()[0]
        if metric not in self.values:
            raise UserError(f"no metric {metric!r} in this surface; it has {', '.join(self.values)}")
        return plot_surface(self.x, self.y, self.values, metric, kind, ax, **kwargs)


def open_h5(path: str, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        reason = " ".join(str(exc).split())
        if "unable to lock file" in reason or exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # HDF5's flock
            raise UserError(f"{path} is open for writing by another process ({reason}); wait for it to finish or use "
                            "another --out") from None
        if "truncated file" in reason:  # a copy cut short, a full disk: the kills we make leave no such file
            raise UserError(f"{path} is truncated ({reason[:120]}); delete it to compute it again, or rerun with a "
                            "fresh --out") from None
        raise UserError(f"{path} is corrupt or not a readable HDF5 file ({reason[:120]}); delete it or move it away, "
                        "or rerun with a fresh --out") from None


def check_ours(f: h5py.File, path: str, kind: str = SURFACE) -> int:
    """The schema version of a file of ours of this kind; refuse foreign and newer files and the other kind."""
    if f.attrs.get("producer") != PRODUCER or "schema_version" not in f.attrs:
        raise UserError(f"{path} is an HDF5 file but not a landscape {kind}; move it away or choose another --out")
    version = int(f.attrs["schema_version"])
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} has schema version {version}, newer than this landscape ({SCHEMA_VERSION}); "
                        "upgrade landscape")
    found = f.attrs.get("kind", SURFACE)  # files before 0.8 are surfaces
    if found != kind:
        how = "python -m landscape.connect FILE.h5 re-plots it" if found == CURVE else "plot1d/plot2d read it"
        raise UserError(f"{path} is a {found} file, not a {kind} file ({how}); give a {kind} file")
    return version


def _write_directions(f: h5py.File, directions: list[Arrays]) -> None:
    """Each direction's non-zero tensors; the group's `tensors` attribute lists every tensor (name, shape), so a
    tensor a direction does not move (outside a subset, or a zeroed bias) is implied zero, not stored."""
    group = f.create_group("directions")
    first = directions[0] if directions else {}
    group.attrs["tensors"] = json.dumps([[k, list(np.shape(v))] for k, v in first.items()])
    for i, d in enumerate(directions):
        sub = group.create_group(f"d{i + 1}")
        for k, v in d.items():
            a = as_array(v)
            if np.any(a):
                sub.create_dataset(k, data=a)


def header() -> dict[str, Any]:
    """The attributes every file of ours opens with: what made it, and in which schema."""
    return {"producer": PRODUCER, "schema_version": SCHEMA_VERSION, "created_by": f"landscape {__version__}"}


def _write(path: str, s: Surface, directions: list[Arrays]) -> None:
    """`s` and its directions as a new file in the current schema, written atomically."""
    o = s.origin
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({
            **header(), "kind": SURFACE, "metrics": json.dumps(list(s.values)),
            "fingerprint": json.dumps(s.fingerprint, sort_keys=True), "config": json.dumps(s.config),
            "checkpoint": o.checkpoint, "checkpoint_sha256": o.checkpoint_sha256, "target_checkpoint": o.target,
            "directions_sha256": s.directions_sha256, "model": json.dumps(o.model),
            "checkpoint_metrics": json.dumps(o.metrics), "checkpoint_train_config": json.dumps(o.training.config),
            "acc_unit": "percent", "report": json.dumps(s.report),
            "axis_labels": json.dumps(list(s.annotations.axis_labels))})
        axes = [("x", f.create_dataset("xcoordinates", data=np.asarray(s.x, np.float64)))]
        if s.y is not None:  # dimension 0 (rows) is y, dimension 1 (columns) is x
            axes.insert(0, ("y", f.create_dataset("ycoordinates", data=np.asarray(s.y, np.float64))))
        for label, scale in axes:
            scale.make_scale(label)
        for name, data in [*s.values.items(), ("done", s.done.astype(np.uint8))]:
            ds = f.create_dataset(name, data=data)
            for dim, (label, scale) in enumerate(axes):
                ds.dims[dim].attach_scale(scale)
                ds.dims[dim].label = label
        _write_directions(f, directions)
        _write_annotations(f, s.annotations)


def _write_annotations(f: h5py.File, a: Annotations) -> None:
    if a.markers is not None:
        ds = f.create_dataset("markers/coordinates", data=np.asarray(a.markers.coords, np.float64))
        ds.attrs.update({"names": json.dumps(list(a.markers.names)), "kind": a.markers.kind})
    if a.explained_variance_ratio:
        f.create_dataset("explained_variance_ratio", data=np.asarray(a.explained_variance_ratio, np.float64))
    if a.curve is not None:
        f.create_dataset("markers/curve", data=np.asarray(a.curve, np.float64))


def _read_annotations(f: h5py.File, attrs: dict[str, Any]) -> Annotations:
    markers = None
    if "markers/coordinates" in f:
        ds = f["markers/coordinates"]
        markers = Markers(tuple(json.loads(ds.attrs["names"])), ds[...], str(ds.attrs["kind"]))
    ratio = tuple(map(float, f["explained_variance_ratio"][...])) if "explained_variance_ratio" in f else ()
    curve = f["markers/curve"][...] if "markers/curve" in f else None
    return Annotations(tuple(json.loads(attrs.get("axis_labels") or "[]")), markers, ratio, curve)


def open_surface(path: str, x: np.ndarray, y: np.ndarray | None, metrics: list[str], directions: list[Arrays],
                 *, origin: Origin, evaluation: dict[str, Any], config: dict[str, Any],
                 report: dict[str, Any] | None = None, annotations: Annotations | None = None) -> SurfaceWriter:
    """The writer of a request's surface file, which is created if missing (rank 0 only).

    An existing file must have been made from the same checkpoint, directions, grid and `evaluation` (the
    splits, samples, loss, precision and data that decide the values), or it is refused and left untouched.
    A schema-1 file is then rewritten in the current schema, its points kept. `report` (the sanity report) and
    `annotations` (markers, axis names) are stored with a new file.
    """
    dir_hash = directions_sha256(directions)
    fingerprint = fingerprint_of(origin.checkpoint_sha256, dir_hash, evaluation, x, y)
    if os.path.exists(path):
        surface = read_surface(path)
        check_fingerprint(path, surface.fingerprint, fingerprint)
        missing = [m for m in metrics if m not in surface.values]
        if missing:
            raise UserError(f"{path} lacks {missing}; it was made for other splits: use another --out")
        if surface.schema_version < SCHEMA_VERSION:
            _write(path, surface, read_directions(path))
            surface.schema_version = SCHEMA_VERSION
    else:
        surface = empty_surface(x, y, metrics, origin, config=config, fingerprint=fingerprint, dir_hash=dir_hash,
                                report=report, annotations=annotations)
        _write(path, surface, directions)
    return SurfaceWriter(path, surface, metrics)


def empty_surface(x: np.ndarray, y: np.ndarray | None, metrics: list[str], origin: Origin | None = None,
                  *, config: dict[str, Any] | None = None, fingerprint: dict[str, Any] | None = None,
                  dir_hash: str = "", report: dict[str, Any] | None = None,
                  annotations: Annotations | None = None) -> Surface:
    """A surface with no point done: NaN values, the mask all False."""
    shape = grid_shape(x, y)
    return Surface(x, y, {m: np.full(shape, np.nan) for m in metrics}, np.zeros(shape, bool), origin or Origin(),
                   config=config or {}, fingerprint=fingerprint or {}, directions_sha256=dir_hash, report=report or {},
                   annotations=annotations or Annotations())


class SurfaceSink:
    """A `Sink` of landscape.core.grid_eval.compute_surface that fills a Surface in memory (rank 0 only): rows
    arrive by flat point index (landscape.base.grid's order). `surface` is the result, without a read back."""

    def __init__(self, surface: Surface, metrics: list[str]):
        for m in metrics:  # writable and contiguous (a schema-1 file's values are transposed views)
            surface.values[m] = np.ascontiguousarray(surface.values[m])
        surface.done = np.ascontiguousarray(surface.done)
        self.surface = surface
        self.values = {m: surface.values[m] for m in metrics}
        self.done = surface.done

    def done_points(self) -> np.ndarray:
        """Flat bool mask of the points already stored."""
        return self.done.reshape(-1).copy()

    def write(self, flat_idx: np.ndarray, rows: np.ndarray) -> None:
        """Store rows (len(flat_idx), n_metrics) at flat point indices, then mark them done."""
        for j, m in enumerate(self.values):
            self.values[m].reshape(-1)[flat_idx] = rows[:, j]
        self.done.reshape(-1)[flat_idx] = True

    def close(self) -> None:
        pass


class SurfaceWriter(SurfaceSink):
    """A SurfaceSink that holds its surface file open and flushes every row as it arrives; `file` and `group`:
    one path of a curve file, whose datasets lie under the group and whose file its CurveFile holds open."""

    def __init__(self, path: str, surface: Surface, metrics: list[str], file: h5py.File | None = None,
                 group: str = ""):
        super().__init__(surface, metrics)
        self.path, self.group, self.owns = path, group, file is None
        self.file = open_h5(path, "r+") if file is None else file

    def write(self, flat_idx: np.ndarray, rows: np.ndarray) -> None:
        """Store rows at flat point indices, then mark them done; the file is flushed after each."""
        for j, m in enumerate(self.values):
            self.values[m].reshape(-1)[flat_idx] = rows[:, j]
            self.file[self.group + m][...] = self.values[m]
        self.file.flush()  # values reach the file before the mask that says they are valid
        self.done.reshape(-1)[flat_idx] = True
        self.file[self.group + "done"][...] = self.done.astype(np.uint8)
        self.file.flush()

    def close(self) -> None:
        if self.owns:
            self.file.close()


def check_resumable(path: str, origin: Origin, directions: list[Arrays], evaluation: dict[str, Any],
                    x: np.ndarray | None, y: np.ndarray | None) -> None:
    """Refuse an existing file made by another request before anything is evaluated (open_surface checks again
    once auto axes are known). x None: axes not known yet, left out of the comparison."""
    if not os.path.exists(path):
        return
    current = fingerprint_of(origin.checkpoint_sha256, directions_sha256(directions), evaluation, x, y)
    stored = read_surface(path).fingerprint
    if x is None:
        stored = {k: v for k, v in stored.items() if k not in ("xcoordinates", "ycoordinates")}
    check_fingerprint(path, stored, current)


def json_attr(attrs: dict[str, Any], key: str) -> Any:
    return json.loads(attrs.get(key) or "{}")


def read_surface(path: str) -> Surface:
    """A surface file of either schema, 2D values as (ny, nx)."""
    if not os.path.exists(path):
        raise UserError(f"surface file not found: {path}")
    with open_h5(path, "r") as f:
        version = check_ours(f, path)
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        x = f["xcoordinates"][...]
        y = f["ycoordinates"][...] if "ycoordinates" in f else None
        transpose = version == 1 and y is not None  # schema 1 stored (nx, ny)
        metrics = json.loads(a["metrics"]) if "metrics" in a else [k for k in _SCHEMA1_METRICS if k in f]
        values = {m: f[m][...].T if transpose else f[m][...] for m in metrics}
        done = (f["done"][...].T if transpose else f["done"][...]).astype(bool)
        annotations = _read_annotations(f, a)
    origin = Origin(a.get("checkpoint", ""), a.get("checkpoint_sha256", ""), a.get("target_checkpoint", ""),
                    json_attr(a, "model"), json_attr(a, "checkpoint_metrics"),
                    Training.from_train_config(json_attr(a, "checkpoint_train_config")))
    return Surface(x, y, values, done, origin, config=json_attr(a, "config"),
                   fingerprint=json_attr(a, "fingerprint"), directions_sha256=a.get("directions_sha256", ""),
                   schema_version=version, report=json_attr(a, "report"), annotations=annotations)


def read_directions(path: str) -> list[Arrays]:
    """The directions stored in a surface (or direction) file, keyed by parameter name, float32."""
    if not os.path.exists(path):
        raise UserError(f"direction file not found: {path}")
    with open_h5(path, "r") as f:
        check_ours(f, path)
        if "directions" not in f:
            raise UserError(f"{path} holds no directions; give a surface file written by landscape")
        g = f["directions"]
        if "tensors" not in g.attrs:  # before 0.7 every tensor was stored
            return [{k: g[name][k][...] for k in g[name]} for name in sorted(g)]
        tensors = json.loads(g.attrs["tensors"])
        return [{k: g[name][k][...] if k in g[name] else np.zeros(shape, np.float32) for k, shape in tensors}
                for name in sorted(g, key=lambda n: int(n[1:]))]


def save_directions(path: str, directions: list[Arrays], config: dict[str, Any] | None = None) -> None:
    """A standalone direction file (the layout of a surface file's /directions), written atomically; `--directions`
    and read_directions take it like a surface file. The directions may hold numpy arrays or torch tensors (what
    landscape.random_directions returns)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({**header(), "directions_sha256": directions_sha256(directions),
                        "config": json.dumps(config or {})})
        _write_directions(f, directions)
